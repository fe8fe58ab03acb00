"""The studies' boundary: their analyses import nothing of the method's code (they read records), and the library
never imports a study or a script."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_analyses_import_nothing_of_the_method():
    code = ("import sys, studies.rar.analysis, studies.scores.analysis, studies.length.analysis, "
            "studies.ensemble_size.analysis, studies.latent_size.analysis, studies.error_map.analysis; "
            "print(sorted(name for name in sys.modules if name.startswith('utils.method')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


def test_the_library_imports_no_study_and_no_script():
    importing = re.compile(r"^\s*(from|import)\s+(studies|scripts)\b", re.MULTILINE)
    library = [*(REPO / "utils").rglob("*.py"), *(REPO / "models").rglob("*.py"), *(REPO / "datasets").rglob("*.py"),
               *REPO.glob("*.py")]
    assert [str(path.relative_to(REPO)) for path in library if importing.search(path.read_text())] == []
