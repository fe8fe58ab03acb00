"""train.py and eval.py end to end on tiny data: every backbone, resume after kill -9, refusals."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import eval as evaluate
import train
from tests.conftest import REPO, run_cli, write_config
from utils import atomic
from utils.errors import UserError
from utils.method.rar import features_of
from utils.method.reference import IMAGE_SCORES
from utils.run import checkpoint, config


def weights(run_dir, index):
    return checkpoint.load(checkpoint.learner_path(run_dir, index))["model"]


def user_error(main, argv, capsys):
    """Run a command that must fail on bad input: exit code 2 and one `error:` line (returned)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("network", ["AE", "AE-U", "MemAE"])
def test_train_then_eval(tiny_root, tmp_path, network, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", network)
    train.main(["--config", str(cfg)])
    for index in range(2):
        state = checkpoint.load(checkpoint.learner_path(tmp_path / "run", index))
        assert state["epoch"] == 2 and state["backbone"]["network"] == network
        assert state["config"]["Model"]["network"] == network
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    junior = [r for r in records if r["tag"] == "learner1"]
    assert len(junior) == 2 and 0 <= junior[0]["repulsion"] <= 1 and "cka_senior0" in junior[0]
    assert all("repulsion" not in r for r in records if r["tag"] == "learner0")
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "run" / "tb").iterdir())

    evaluate.main(["--config", str(cfg)])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    for score in ("rec", "unc", "dsu"):
        assert 0 <= results[score]["auc"] <= 1 and 0 < results[score]["ap"] <= 1
    assert results["run"]["network"] == network
    assert results["run"]["split"] == "custom"  # the synthetic set is not a Med-AD benchmark split
    assert "split: custom split: no file in common" in (tmp_path / "run" / "train.log").read_text()
    lines = (tmp_path / "run" / "scores.csv").read_text().splitlines()
    assert lines[0] == ",".join(("file", "label", *IMAGE_SCORES)) and len(lines) == 17
    printed = capsys.readouterr().out
    assert "dsu" in printed and "auc" in printed


def test_eval_writes_results_json_last_so_that_it_marks_complete_outputs(tiny_root, tmp_path, monkeypatch):
    """results.json is what marks a run evaluated (grids count it done): an eval stopped while writing it leaves a
    whole scores.csv and no results.json, and a scores.csv is replaced whole or not at all."""
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", Solver={"num_epoch": 1})
    train.main(["--config", str(cfg)])

    def stopped(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "write_json", stopped)
    with pytest.raises(SystemExit):
        evaluate.main(["--config", str(cfg)])
    assert not (tmp_path / "run" / "results.json").exists()
    assert len((tmp_path / "run" / "scores.csv").read_text().splitlines()) == 17

    class Cut:
        def __init__(self, handle):
            self.rows = 0

        def writerow(self, row):
            self.rows += 1
            if self.rows == 5:
                raise KeyboardInterrupt

        def writerows(self, rows):
            for row in rows:
                self.writerow(row)

    before = (tmp_path / "run" / "scores.csv").read_bytes()
    monkeypatch.setattr(atomic.csv, "writer", Cut)  # the one CSV writer, utils/atomic.py's
    with pytest.raises(KeyboardInterrupt):
        evaluate.write_scores_csv(tmp_path / "run" / "scores.csv", ["a.png"] * 8, [0] * 8,
                                  {name: [0.5] * 8 for name in ("rec", "unc", "dsu")})
    assert (tmp_path / "run" / "scores.csv").read_bytes() == before
    assert sorted(path.name for path in (tmp_path / "run").iterdir() if path.name.endswith(".tmp")) == []


def test_eval_uses_checkpoints_alone(tiny_root, tmp_path):
    """Scores come from the stored weights: evaluating twice gives identical CSVs."""
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", Solver={"num_epoch": 1})
    train.main(["--config", str(cfg)])
    evaluate.main(["--config", str(cfg)])
    first = read_scores(tmp_path / "run" / "scores.csv")
    evaluate.main(["--config", str(cfg), "Exp.score_batch=3"])  # other batches, same per-image scores
    second = read_scores(tmp_path / "run" / "scores.csv")
    assert first.keys() == second.keys()
    for name, values in first.items():
        assert values == pytest.approx(second[name], rel=1e-5)


def read_scores(path):
    rows = list(csv.DictReader(open(path)))
    return {name: [float(row[name]) for row in rows] for name in ("rec", "unc", "dsu")}


def test_fast_path_equals_eager_path(tiny_root, tmp_path):
    """Cached senior features give the same training as forwarding the seniors at every step."""
    runs = {}
    for fast in (True, False):
        out = tmp_path / f"fast{fast}"
        cfg = write_config(tmp_path / f"{fast}.yaml", tiny_root, out, Exp={"cache_seniors": fast})
        train.main(["--config", str(cfg)])
        runs[fast] = out
    for index in range(2):
        a, b = weights(runs[True], index), weights(runs[False], index)
        for key in a:
            assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-4, atol=1e-6), key


def test_cached_features_equal_fresh_ones(tiny_root, tmp_path):
    from datasets.medad import load_images, read_split
    from models import to_model_input
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", Solver={"num_epoch": 1})
    train.main(["--config", str(cfg)])
    learner = checkpoint.load_learners(tmp_path / "run", train.config.load(cfg), torch.device("cpu"))[0]
    split = read_split(tiny_root / "tiny")
    images = to_model_input(load_images(split.directory, split.train, 32))
    cached = features_of(learner, images, batch_size=7)
    order = torch.randperm(len(images))[:16]
    with torch.no_grad():
        fresh = learner(images[order])["features"]
    assert torch.allclose(cached[order], fresh, atol=1e-5)


def test_finished_run_is_skipped_and_other_config_or_removed_option_refused(tiny_root, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", Solver={"num_epoch": 1})
    train.main(["--config", str(cfg)])
    before = weights(tmp_path / "run", 1)
    train.main(["--config", str(cfg)])
    assert "finished earlier" in capsys.readouterr().out
    assert_same_weights(before, weights(tmp_path / "run", 1))
    message = user_error(train.main, ["--config", str(cfg), "Solver.lr=0.002"], capsys)
    assert "Solver.lr=0.001 but this config has 0.002" in message
    message = user_error(evaluate.main, ["--config", str(cfg), "Model.network=MemAE"], capsys)
    assert "Model.network='AE' but this config has 'MemAE'" in message
    assert_same_weights(before, weights(tmp_path / "run", 1))

    # As if trained at commit 81a2410 with another similarity than linear CKA: eval.py given today's config (as the
    # runner scripts call it) refuses the folder, as train.py does, rather than scoring it as a linear-CKA run.
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    stored["Model"]["repulsion"] = "rbf_cka"
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(stored))
    for command in (evaluate.main, train.main):
        message = user_error(command, ["--config", str(cfg)], capsys)
        assert "Model.repulsion=rbf_cka is an option this project no longer has" in message
        assert "git checkout 81a2410" in message
    assert not (tmp_path / "run" / "results.json").exists()


def test_eval_refuses_unfinished_and_missing_learners(tiny_root, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", Solver={"num_epoch": 1})
    assert "not found; train first" in user_error(evaluate.main, ["--config", str(cfg)], capsys)
    train.main(["--config", str(cfg)])
    (tmp_path / "run" / "config.yaml").unlink()  # as if the folder came from elsewhere without it
    message = user_error(evaluate.main, ["--config", str(cfg), "Model.num_learners=3"], capsys)
    assert "learner_2.pt not found" in message
    path = checkpoint.learner_path(tmp_path / "run", 1)
    state = checkpoint.load(path)
    state["epoch"] = 0  # as if killed before its end
    checkpoint.save(state, path)
    message = user_error(evaluate.main, ["--config", str(cfg)], capsys)
    assert "learner 1 in" in message and "has 0 of 1 epochs" in message


INTERRUPTED_EPOCHS = 16


@pytest.fixture(scope="module")
def straight_run(tiny_root, tmp_path_factory):
    """The uninterrupted run the stopped ones must end equal to; the checkpoint interval changes no weight."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    cfg = write_config(run_dir.parent / "a.yaml", tiny_root, run_dir, Solver={"num_epoch": INTERRUPTED_EPOCHS})
    assert run_cli("train.py", "--config", cfg).returncode == 0  # the same process setup as the stopped runs
    return run_dir


@pytest.mark.xdist_group("straight_run")  # one worker trains the straight run for both
def test_resume_after_kill_equals_uninterrupted_run(tiny_root, straight_run, tmp_path):
    epochs = INTERRUPTED_EPOCHS
    killed = write_config(tmp_path / "b.yaml", tiny_root, tmp_path / "killed", Solver={"num_epoch": epochs})
    junior = checkpoint.learner_path(tmp_path / "killed", 1)
    process = subprocess.Popen([sys.executable, "train.py", "--config", str(killed)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not junior.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    interrupted_at = checkpoint.load(junior)["epoch"]
    assert 1 <= interrupted_at < epochs, "the kill must land while learner 1 is training"

    result = run_cli("train.py", "--config", killed)
    assert result.returncode == 0, result.stderr
    assert f"learner 1: resuming at epoch {interrupted_at}" in result.stdout
    assert "learner 0: finished earlier" in result.stdout
    for index in range(2):
        assert_same_weights(weights(straight_run, index), weights(tmp_path / "killed", index))


def wait_for_epoch(run_dir, tag, process, timeout=240):
    """Until metrics.jsonl has a record of `tag` (e.g. learner1: an epoch of learner 1 finished)."""
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + timeout
    while not (metrics.is_file() and f'"tag": "{tag}"' in metrics.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, f"waiting for an epoch of {tag}"
        time.sleep(0.01)


@pytest.mark.xdist_group("straight_run")
def test_sigterm_saves_at_the_epoch_end_and_resume_equals_uninterrupted_run(tiny_root, straight_run, tmp_path):
    """Pre-emption: the signal is kept until the epoch ends, a checkpoint is written, the process exits 143 with one
    line; the rerun ends with the weights of a run that was never stopped."""
    epochs, no_periodic_checkpoint = INTERRUPTED_EPOCHS, {"checkpoint_every_s": 3600.0}  # the one found: the signal's
    stopped = write_config(tmp_path / "b.yaml", tiny_root, tmp_path / "stopped", Solver={"num_epoch": epochs},
                           Exp=no_periodic_checkpoint)

    process = subprocess.Popen([sys.executable, "train.py", "--config", str(stopped)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_epoch(tmp_path / "stopped", "learner1", process)  # the junior: its resume reloads the senior
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    junior = checkpoint.learner_path(tmp_path / "stopped", 1)
    stopped_at = checkpoint.load(junior)["epoch"]
    assert 1 <= stopped_at < epochs, "the signal must land while learner 1 is training"
    assert err.splitlines()[-1] == (f"stopped by SIGTERM: learner 1 saved after epoch {stopped_at} of {epochs} in "
                                    f"{junior}; rerun the same command to resume")  # the progress bar comes before

    result = run_cli("train.py", "--config", stopped)
    assert result.returncode == 0, result.stderr
    assert f"learner 1: resuming at epoch {stopped_at}" in result.stdout
    for index in range(2):
        assert_same_weights(weights(straight_run, index), weights(tmp_path / "stopped", index))


STOPPED_AT_ONCE = """
import os, signal, time
from utils.errors import cli
from utils.run import stop

@cli
def main():
    with stop.immediate("evaluation of X left unfinished"):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(60)

main()
"""


def test_a_stop_signal_ends_evaluation_at_once_with_one_line():
    result = run_cli("-c", STOPPED_AT_ONCE, timeout=60)
    assert result.returncode == 128 + signal.SIGUSR1
    assert result.stderr == "stopped by SIGUSR1: evaluation of X left unfinished; rerun the same command to resume\n"


def test_non_finite_loss_stops_and_keeps_checkpoint(tiny_root, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", Solver={"num_epoch": 1})
    train.main(["--config", str(cfg)])
    before = weights(tmp_path / "run", 0)
    result = run_cli("train.py", "--config", cfg, "Solver.num_epoch=3", "Solver.lr=1e30",
                     "Exp.out_dir=" + str(tmp_path / "diverge"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "learner 0, epoch" in result.stderr and "not finite, first in rec;" in result.stderr
    assert result.stderr.strip().endswith("try a lower Solver.lr")
    assert_same_weights(before, weights(tmp_path / "run", 0))


def test_library_code_never_imports_the_top_level_scripts():
    """utils/, datasets/ and models/ are the library; train.py, eval.py, predict.py and sweep.py use it, not the
    other way round (the grid runner calls training and evaluation as functions)."""
    import ast
    scripts = {path.stem for path in REPO.glob("*.py")}
    for package in ("utils", "datasets", "models"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                assert not {name.split(".")[0] for name in names} & scripts, (path, names)


def test_non_finite_repulsion_is_named_with_its_senior(tiny_root, tmp_path, monkeypatch):
    cfg = config.load(write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", Solver={"num_epoch": 1}))
    nan = torch.tensor(float("nan"))
    monkeypatch.setattr(train, "repulsion", lambda junior, seniors: (junior.sum() * nan, torch.stack([nan])))
    with pytest.raises(UserError) as raised:
        train.train(cfg, torch.device("cpu"), echo=False)
    message = str(raised.value)
    assert message.startswith("learner 1, epoch 1: loss is not finite, first in repulsion, cka_senior0;")
    assert message.endswith("the reconstruction stayed finite: try a lower Solver.Lambda")
