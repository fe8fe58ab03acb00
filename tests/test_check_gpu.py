"""check_gpu.py (./scripts/check_gpu.sh), the command a GPU user runs once: end to end on the CPU as the rehearsal it
is there, its verdict from made-up differences, its bad inputs; and on CUDA, the real thing."""
import contextlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

import check_gpu
import train
from tests.conftest import REPO, run_main
from utils.run import cuda_graph


def check_gpu_sh(*args):
    return subprocess.run(["bash", str(REPO / "scripts" / "check_gpu.sh"), *map(str, args)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})


def test_the_rehearsal_runs_end_to_end_and_passes(tmp_path):
    out = tmp_path / "out"
    result = check_gpu_sh("--tiny", "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[1] == f"check_gpu: CPU ({lines[1].split('(')[1].split(')')[0]}), no GPU used: a rehearsal; " \
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    assert lines[-1] == "verdict: rehearsal passed (no GPU: the captured path is the eager step here; run this on " \
        "a GPU)"
    for setting in check_gpu.SETTINGS:
        for path in check_gpu.PATHS:
            assert re.search(rf"^{setting} {path}: trained in [\d.]+ s, scored in [\d.]+ s; rec AUC [\d.]+, unc AUC "
                             r"[\d.]+, dsu AUC [\d.]+$", result.stdout, re.MULTILINE), (setting, path)
            stored = yaml.safe_load((out / setting / path.replace(" ", "_") / "config.yaml").read_text())
            assert stored["Exp"]["cuda_graph"] is (path == "captured")
            assert stored["Solver"]["Lambda"] == (1.0 if setting == "repulsion" else 0.0)
            assert stored["Solver"]["precise_bn"] is (setting == "demo")
        for what in ("losses", "scores"):  # eager repeats bit for bit on the CPU, and captured is eager there
            floor = check_gpu.FLOORS[setting][what]
            assert re.search(rf"^{setting} {what}: captured vs eager 0 \(largest, at .*\); eager vs eager 0; limit "
                             rf"{floor:.3g}: same$", result.stdout, re.MULTILINE), (setting, what)
    assert (out / "check_gpu.txt").read_text() == "\n".join(lines[1:]) + "\n"
    assert (out / "data" / "demo" / "data.json").is_file()  # made there, not in ./data


def test_a_captured_step_that_goes_wrong_after_its_check_is_found(tmp_path, monkeypatch, capsys):
    """The captured step's own check compares its first steps; a replay that stops updating after them passes it,
    and the whole runs tell (emulated on the CPU, with capture as on CUDA for Exp.cuda_graph=true)."""
    def capture(eager, index, device):
        outputs, replays = eager(index), []

        def replay():
            replays.append(index.clone())
            if len(replays) <= cuda_graph.CHECK_STEPS:
                for name, value in eager(index).items():
                    outputs[name].copy_(value)

        return replay, outputs

    monkeypatch.setattr(train, "captures", lambda cfg, device: cfg.Exp.cuda_graph)
    monkeypatch.setattr(cuda_graph, "side_stream", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(cuda_graph, "capture", capture)
    monkeypatch.setattr(check_gpu, "SETTINGS", {"demo": []})
    monkeypatch.setattr(check_gpu, "TINY", [*check_gpu.TINY, "Solver.num_epoch=3"])
    args = check_gpu.parse_args(["--tiny", "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert check_gpu.check(args) == 1
    out = capsys.readouterr().out
    assert "training step captured" in (tmp_path / "out" / "demo" / "captured" / "train.log").read_text()
    assert re.search(r"^demo losses: captured vs eager .*: DIFFERENT$", out, re.MULTILINE), out
    assert out.splitlines()[-1].startswith("verdict: the rehearsal found differences: demo losses: ")


def runs_with(captured, again, scale=1.0):
    """Three made-up runs: eager, eager again and captured differing by the given relative amounts."""
    eager = {"losses": {"learner0 epoch 1": 2.0, "learner0 epoch 2": 1.0},
             "scores": {"rec": np.array([1.0, 2.0, 4.0]), "unc": np.array([0.5, 0.5, 1.0])}}

    def off(by):
        return {"losses": {key: value * (1 + by) for key, value in eager["losses"].items()},
                "scores": {name: value * (1 + by) for name, value in eager["scores"].items()}}

    return {"eager": eager, "eager again": off(again), "captured": off(captured)}


@pytest.mark.parametrize("captured, again, same", [
    (0.0, 0.0, True),
    (0.04, 0.0, True),  # within the floors while eager repeats exactly
    (0.2, 0.0, False),  # beyond them
    (0.3, 0.1, True),  # within 4 x eager's own noise
    (0.5, 0.1, False),  # beyond it
])
def test_captured_is_judged_against_eager_noise_with_a_floor(captured, again, same):
    floors = {"losses": 0.05, "scores": 0.1}
    rows = check_gpu.compare(runs_with(captured, again), floors)
    assert [row[0] for row in rows] == ["losses", "scores"]
    for what, found, where, noise, limit, within in rows:
        assert found == pytest.approx(captured) and noise == pytest.approx(again)
        assert limit == pytest.approx(max(check_gpu.NOISE_FACTOR * again, floors[what]))
        assert within is same, what


def test_differences_are_relative_norms_over_all_losses_and_over_each_score():
    eager = {"learner0 epoch 1": 1.0, "learner0 epoch 2": 2.0}
    found, where = check_gpu.difference({"learner0 epoch 1": 1.1, "learner0 epoch 2": 2.0}, eager, "losses")
    assert (found, where) == (pytest.approx(0.1 / 5 ** 0.5), "learner0 epoch 1")
    eager = {"rec": np.array([3.0, 4.0]), "unc": np.array([1.0, 0.0])}
    found, where = check_gpu.difference({"rec": np.array([3.0, 4.5]), "unc": np.array([1.0, 0.2])}, eager, "scores")
    assert (found, where) == (pytest.approx(0.2), "unc")


def test_the_verdict_on_a_gpu_names_what_to_report(tmp_path):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert check_gpu.verdict(cuda, [], tmp_path) == (
        "verdict: the captured step trains as the eager step does on this GPU; keep Exp.cuda_graph=true", 0)
    text, code = check_gpu.verdict(cuda, ["demo losses: captured vs eager 0.3 ...: DIFFERENT"], tmp_path)
    assert code == 1 and "does NOT train as the eager step does" in text and "Exp.cuda_graph=false" in text
    assert f"{tmp_path / 'check_gpu.txt'}" in text and text.endswith("\n  demo losses: captured vs eager 0.3 ...: "
                                                                     "DIFFERENT")
    assert check_gpu.verdict(cpu, [], tmp_path)[1] == 0 and check_gpu.verdict(cpu, ["x"], tmp_path)[1] == 1


def test_it_never_writes_into_a_folder_in_use_and_wants_demo_data(tmp_path):
    used = tmp_path / "runs"
    used.mkdir()
    (used / "results.json").write_text("{}")
    result = run_main("check_gpu.py", "--out", used, "--device", "cpu")
    assert (result.returncode, result.stderr) == (2, f"error: --out {used} exists and is not an empty folder; give a "
                                                     "new folder (runs are never written over)\n")
    assert sorted(path.name for path in used.iterdir()) == ["results.json"]
    result = run_main("check_gpu.py", "--out", tmp_path / "new", "--data", tmp_path / "nothing", "--device", "cpu")
    assert result.returncode == 2 and result.stderr.startswith(f"error: --data {tmp_path / 'nothing'} holds no demo "
                                                               "data set (demo/data.json); make one with python -m "
                                                               "datasets.prepare.demo ")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_captured_step_is_used_and_trains_as_eager(tmp_path):
    result = check_gpu_sh("--tiny", "--out", tmp_path / "out", "--device", "cuda")
    assert "the captured step was not used" not in result.stdout, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.splitlines()[-1].startswith("verdict: the captured step trains as the eager step does")
    assert f"check_gpu: {torch.cuda.get_device_name(0)} (cuda:0); torch {torch.__version__}" in result.stdout
