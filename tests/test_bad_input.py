"""Every bad input ends in one clear line and exit code 2, never a traceback, and loses nothing written before."""
import importlib
import json
import pickle
import shutil

import pytest
import torch

from tests.conftest import run_cli, run_main, write_config
from utils.errors import UserError
from utils.run import checkpoint


def fails_cleanly(result, *fragments):
    """Exit code 2, no traceback, and exactly one `error:` line holding every fragment."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]
    return errors[0]


@pytest.fixture
def broken_root(tiny_root, tmp_path):
    """A private copy of the tiny data set to damage."""
    shutil.copytree(tiny_root / "tiny", tmp_path / "data" / "tiny")
    return tmp_path / "data"


def data_json(root):
    return root / "tiny" / "data.json"


CASES = {
    "missing root": (lambda root: shutil.rmtree(root), ["data root", "does not exist"]),
    "missing data.json": (lambda root: data_json(root).unlink(), ["data.json does not exist"]),
    "malformed JSON": (lambda root: data_json(root).write_text('{"train": [1,'), ["not valid JSON", "line 1"]),
    "wrong schema": (lambda root: data_json(root).write_text(json.dumps({"train": {"0": ["a.png"]}, "test": {"0": 3}})),
                     ["test"]),
    "missing image": (lambda root: next((root / "tiny" / "images").glob("train_*")).unlink(),
                      ["missing", "train_"]),
    "corrupt image": (lambda root: next((root / "tiny" / "images").glob("train_*")).write_bytes(b"not a png"),
                      ["train_"]),
    "empty split": (lambda root: data_json(root).write_text(json.dumps(
        {"train": {"0": []}, "test": json.loads(data_json(root).read_text())["test"]})), ["train"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data(case, broken_root, tmp_path):
    damage, fragments = CASES[case]
    damage(broken_root)
    cfg = write_config(tmp_path / "c.yaml", broken_root, tmp_path / "run")
    fails_cleanly(run_main("train.py", "--config", cfg), *fragments)


@pytest.mark.parametrize("override, fragment", [
    ("Data.img_size=40", "Data.img_size must be a positive multiple of 16"),
    ("Model.network=ResNet", "unknown config Model.network 'ResNet'"),
    ("Solver.lrate=0.1", "did you mean 'Solver.lr'"),
    ("Solver.bs=sixty", "Solver.bs must be int"),
    ("Exp.device=cuda:7", "Exp.device=cuda:7"),  # no GPU here (CI); on a GPU machine: only 1..n visible
])
def test_bad_config(override, fragment, tiny_root, tmp_path):
    if override.startswith("Exp.device") and torch.cuda.device_count() > 7:
        pytest.skip("this machine really has a cuda:7")
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run")
    run = run_cli if override == "Solver.lrate=0.1" else run_main  # one case as a user runs it, in a fresh process
    fails_cleanly(run("train.py", "--config", cfg, override), fragment)
    fails_cleanly(run("eval.py", "--config", cfg, override), fragment)


def test_missing_config_file(tmp_path):
    fails_cleanly(run_cli("train.py", "--config", tmp_path / "nope.yaml"), "nope.yaml not found")


def test_unwritable_output_folder(tiny_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cfg = write_config(tmp_path / "c.yaml", tiny_root, blocker / "run")
    fails_cleanly(run_main("train.py", "--config", cfg), "cannot write to run folder")


def test_mismatched_and_corrupt_checkpoints_keep_the_run(tiny_root, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", Solver={"num_epoch": 1})
    assert run_main("train.py", "--config", cfg).returncode == 0
    saved = {p.name: p.read_bytes() for p in (tmp_path / "run").glob("learner_*.pt")}
    fails_cleanly(run_main("eval.py", "--config", cfg, "Model.ls=8"), "Model.ls=16", "has 8")
    fails_cleanly(run_main("train.py", "--config", cfg, "Solver.seed=4"), "Solver.seed=3", "has 4")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").glob("learner_*.pt")} == saved

    truncated = tmp_path / "run" / "learner_1.pt"
    truncated.write_bytes(saved["learner_1.pt"][:1000])
    fails_cleanly(run_main("eval.py", "--config", cfg), "learner_1.pt cannot be read")


class Exploit:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_checkpoints_never_run_pickled_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "learner_0.pt"
    torch.save({"format": checkpoint.FORMAT, "payload": Exploit()}, path)
    with pytest.raises(UserError, match="cannot be read"):
        checkpoint.load(path)
    assert not (tmp_path / "PWNED").exists()
    with open(tmp_path / "plain.pkl", "wb") as handle:  # the counter-check: plain unpickling would run it
        pickle.dump(Exploit(), handle)
    with open(tmp_path / "plain.pkl", "rb") as handle:
        pickle.load(handle)
    assert (tmp_path / "PWNED").exists()


def test_foreign_checkpoint_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(UserError, match="not a D2UE learner checkpoint"):
        checkpoint.load(path)


@pytest.mark.parametrize("command, prog", [
    ("train", "train.py"), ("eval", "eval.py"), ("predict", "predict.py"), ("sweep", "sweep.py"),
    ("check_gpu", "check_gpu.py"), ("datasets.check", "python -m datasets.check"),
    ("datasets.prepare.__main__", "python -m datasets.prepare"),
    ("datasets.prepare.demo", "python -m datasets.prepare.demo"),
    ("datasets.prepare.fashion_mnist", "python -m datasets.prepare.fashion_mnist"),
    ("datasets.prepare.validation", "python -m datasets.prepare validation"),
    ("studies.latent_size.analysis", "python -m studies.latent_size.analysis"),
])
def test_a_command_line_mistake_is_one_line_naming_it(command, prog, monkeypatch):
    """argparse prints its whole usage before the error; every command says only the error and where help is."""
    monkeypatch.setattr("sys.argv", [f"{command.rsplit('.', 1)[-1]}.py"])  # what argparse names the program after
    result = run_main(importlib.import_module(command), "--no-such-option")
    line = fails_cleanly(result, f"(see {prog} --help)")
    assert result.stderr.strip() == line and ("--no-such-option" in line or "required" in line)
