"""Shared fixtures: a tiny Med-AD data set built once per test session, and a tiny config to train on it."""
import contextlib
import importlib
import importlib.util
import io
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from datasets.prepare.demo import make_demo

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)  # small tensors: threads cost more than they give, and results stay reproducible


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A Med-AD root holding one small synthetic data set, "tiny" (48 train, 8 + 8 test, with masks)."""
    root = tmp_path_factory.mktemp("medad")
    make_demo(root / "tiny", seed=1, n_train=48, n_test_normal=8, n_test_abnormal=8, size=64)
    return root


def write_config(path, root, out_dir, network="AE", **sections):
    """A small YAML config for the tiny data set; `sections` updates e.g. Solver={"num_epoch": 3}."""
    raw = {"Exp": {"out_dir": str(out_dir), "device": "cpu", "checkpoint_every_s": 0.0, "workers": 1},
           "Model": {"network": network, "num_learners": 2},
           "Data": {"root": str(root), "dataset": "tiny", "img_size": 32},
           "Solver": {"bs": 16, "lr": 1e-3, "num_epoch": 2, "seed": 3}}
    for section, values in sections.items():
        raw[section].update(values)
    Path(path).write_text(yaml.safe_dump(raw))
    return Path(path)


def run_cli(*args, timeout=300):
    """Run a project command in a fresh interpreter, as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def run_main(script, *args):
    """Run a project command's main() in this process, as its command line would with these arguments: the
    CompletedProcess run_cli gives (exit code, stdout, stderr), without a fresh interpreter's seconds of start-up.
    For the commands' error paths; an exception main() lets through fails the test as a traceback would. `script`
    may also be an imported module with a main(argv) (the `python -m` commands)."""
    if isinstance(script, types.ModuleType):
        module = script
    else:
        path = Path(script)
        module = load_script(path.stem) if path.parent.name == "scripts" else importlib.import_module(path.stem)
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            module.main(list(map(str, args)))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess([str(script), *map(str, args)], code, stdout.getvalue(), stderr.getvalue())


def load_script(name):
    """A script of scripts/ as a module, by its path under scripts/ without ".py" (e.g. "dev/bench"): they are run
    as files, not imported as a package."""
    spec = importlib.util.spec_from_file_location(Path(name).name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
