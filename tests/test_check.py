"""python -m datasets.check: exit codes and one line per problem, never a traceback."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import check
from datasets.prepare.demo import make_demo

REPO = Path(__file__).resolve().parents[1]


def run_check(folder):
    result = subprocess.run([sys.executable, "-m", "datasets.check", str(folder)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("check") / "demo", n_train=12, n_test_normal=6, n_test_abnormal=6,
                     size=32)


def test_clean_demo_passes(demo):
    result = run_check(demo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'train."0" (normal training files): 12' in result.stdout
    assert 'test."1" (abnormal test files): 6' in result.stdout
    assert "width 32/32/32" in result.stdout and "no problems found" in result.stdout
    assert "split: custom split: no file in common with the Med-AD benchmark splits" in result.stdout


def test_injected_problems_are_each_reported(demo, tmp_path):
    folder = shutil.copytree(demo, tmp_path / "broken")
    data = json.loads((folder / "data.json").read_text())
    train, normal = data["train"]["0"], data["test"]["0"]
    shutil.copy(folder / "images" / train[1], folder / "images" / train[2])    # same bytes, both in train
    shutil.copy(folder / "images" / train[3], folder / "images" / normal[0])   # same bytes in train and test
    (folder / "images" / train[4]).write_bytes(b"not an image")                 # corrupt
    (folder / "images" / train[5]).unlink()                                     # missing
    data["train"]["0"] += [normal[1], train[6]]  # leakage by name; listed twice
    (folder / "data.json").write_text(json.dumps(data))

    result = run_check(folder)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()

    def line_with(*parts):
        return [line for line in lines if all(part in line for part in parts)]

    assert line_with("identical content:", train[1], train[2])
    assert line_with("identical content in train and test (leakage)", train[3], normal[0])
    assert line_with("unreadable image", train[4])
    assert line_with("missing from", train[5])
    assert line_with("leakage:", "1 files", normal[1])
    assert line_with('listed twice in train."0"', train[6])
    assert "problems found" in result.stdout


def test_schema_problems_are_reported_not_raised(demo, tmp_path):
    folder = shutil.copytree(demo, tmp_path / "schema")
    data = json.loads((folder / "data.json").read_text())
    del data["test"]["1"]
    data["extra"] = 1
    (folder / "data.json").write_text(json.dumps(data))
    result = run_check(folder)
    assert result.returncode == 1
    assert 'test."1" is missing' in result.stdout and 'unknown key "extra"' in result.stdout
    assert 'train."0" (normal training files): 12' in result.stdout  # still checks what it can


def test_unreadable_folder_is_a_user_error(tmp_path):
    result = run_check(tmp_path / "nowhere")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "nowhere does not exist" in result.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "data.json").write_text("{")
    result = run_check(tmp_path / "bad")
    assert result.returncode == 2 and "not valid JSON" in result.stderr


@pytest.fixture(scope="module")
def brain_benchmark(tmp_path_factory):
    """A folder named anything, holding the shipped BrainTumor split with small fake images, all different."""
    folder = tmp_path_factory.mktemp("check") / "my_copy"
    (folder / "images").mkdir(parents=True)
    data = json.loads((REPO / "datasets" / "splits" / "BrainTumor.json").read_text())
    lists = [data["train"]["0"], data["test"]["0"], data["test"]["1"]]
    for index, name in enumerate(name for names in lists for name in names):
        pixels = np.frombuffer(index.to_bytes(4, "little") * 4, np.uint8).reshape(4, 4)
        Image.fromarray(pixels).save(folder / "images" / name, format="PNG")  # PNG bytes under a .jpg name
    (folder / "data.json").write_text(json.dumps(data))  # as shipped, train.unlabeled included but not on disk
    return folder


def check_in_process(folder, capsys):
    """datasets.check's main in this process (the subprocess runs above cover the command line): (code, stdout)."""
    code = check.main([str(folder)])
    return code, capsys.readouterr().out


def test_benchmark_split_is_recognised(brain_benchmark, capsys):
    code, out = check_in_process(brain_benchmark, capsys)
    assert code == 0, out
    assert "split: BrainTumor: the Med-AD benchmark split" in out.splitlines()


def test_two_files_moved_from_train_to_test_are_named(brain_benchmark, tmp_path, capsys):
    folder = shutil.copytree(brain_benchmark, tmp_path / "moved")
    data = json.loads((folder / "data.json").read_text())
    moved = [data["train"]["0"].pop(0), data["train"]["0"].pop(0)]
    data["test"]["0"] += moved
    (folder / "data.json").write_text(json.dumps(data))
    code, out = check_in_process(folder, capsys)
    assert code == 0, out  # another split is not a problem
    assert ("split: custom split, closest to the Med-AD BrainTumor split: 2 moved from train normal to test normal "
            f"({', '.join(sorted(moved))})") in out.splitlines()
