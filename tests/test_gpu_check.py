"""scripts/dev/gpu_check.sh, the GPU session's one script: its stages run end to end on the CPU at small sizes, so that
on a lent GPU only the device differs."""
import json
import math
import os
import re
import subprocess
import sys

import yaml

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "dev" / "gpu_check.sh"
SMALL = {"DEVICE": "cpu", "N_TRAIN": "64", "N_TEST": "8", "SIZE": "64", "EPOCHS": "1", "GRID_CELLS": "2",
         "GRID_EPOCHS": "1", "GRID_WORKERS": "2"}


def gpu_check(tmp_path, *stages):
    env = {**os.environ, **SMALL, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "WORK": str(tmp_path / "work")}
    return subprocess.run(["bash", str(SCRIPT), *stages], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def test_bench_e2e_and_grid_stages_time_real_runs(tmp_path):
    result = gpu_check(tmp_path, "bench", "e2e", "grid")
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "no CUDA device" in report and "DEVICE=cpu -> cpu" in report
    assert re.search(r"data: 64 train, 8 test, 64x64 PNGs written in [\d.]+ s", report)
    # scripts/dev/bench.py end to end, through the stage that runs it on a GPU.
    bench = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert bench["device"].startswith("cpu") and (bench["n_train"], bench["n_test"], bench["epochs"]) == (64, 8, 1)
    required = ("train_s_per_epoch", "score_images_per_s", "peak_mem_mb", "naive_train_s_per_epoch",
                "naive_score_images_per_s", "naive_score_images", "train_speedup", "score_speedup")
    assert all(key in bench for key in required), [key for key in required if key not in bench]
    assert len(bench["train_s_per_epoch"]) == len(bench["naive_train_s_per_epoch"]) == 3
    assert all(value > 0 for value in bench["train_s_per_epoch"] + bench["naive_train_s_per_epoch"])
    assert bench["naive_score_images"] == 8 and bench["peak_mem_mb"] > 0
    # The same training on both paths; train.py's CPU path uses fused Adam and channels-last weights (same maths,
    # other rounding), so a few steps differ in the fourth digit. Exact step equality: tests/test_fast.py.
    assert bench["loss_max_rel_diff"] < 1e-3
    assert bench["score_max_rel_diff"]["rec"] < 1e-3 and bench["score_max_rel_diff"]["unc"] < 1e-3
    assert all(math.isfinite(bench[key]) for key in ("train_speedup", "score_speedup"))
    # The profiled junior: 3 seniors, 10 epochs of 64 // 64 steps, and its table of operators by self time.
    profile = (tmp_path / "out" / "profile.txt").read_text()
    assert bench["profile_s_per_epoch"] > 0 and profile.startswith("learner 3 (3 seniors), 10 epochs of 1 steps on cpu")
    assert "Self CPU" in profile and "aten::convolution" in profile
    work = tmp_path / "work"
    # On the CPU the captured step is the eager one: the stage runs it once and says so.
    assert "e2e Exp.cuda_graph=true: not run" in report and not (work / "e2e_fast_true").exists()
    results = json.loads((work / "e2e_fast_false" / "results.json").read_text())
    settings = yaml.safe_load((work / "e2e_fast_false" / "config.yaml").read_text())
    assert settings["Exp"]["cuda_graph"] is False and results["run"]["num_epoch"] == 1
    line = re.search(r"e2e Exp.cuda_graph=false: .* in ([\d.]+) s, .*; rec AUC ([\d.]+), unc AUC ([\d.]+), "
                     r"dsu AUC ([\d.]+)", report)
    assert line and float(line[1]) > 0
    assert [float(value) for value in line.groups()[1:]] == \
        [round(results[score]["auc"], 4) for score in ("rec", "unc", "dsu")]
    grid = re.search(r"grid: 2 RSNA_AE cells x 1 epochs, 2 worker\(s\): ([\d.]+) s, ([\d.]+) cells per minute", report)
    assert grid and abs(float(grid[2]) - 2 * 60 / float(grid[1])) < 0.01
    for seed in (1, 2):
        results = json.loads((work / "grid_w2" / f"rsna_synthetic_AE_s{seed}" / "results.json").read_text())
        assert results["run"]["seed"] == seed


def test_unknown_stage_is_one_line(tmp_path):
    result = gpu_check(tmp_path, "e2e", "benchmark")
    assert result.returncode == 2
    assert result.stderr == "error: unknown stage 'benchmark'; stages: tests bench e2e grid\n"
    assert not (tmp_path / "out").exists()  # checked before anything runs


def test_a_device_this_machine_lacks_stops_before_any_stage_in_one_line(tmp_path):
    """DEVICE=cuda takes the path a GPU run takes (utils.run.runtime.pick_device); here it has no GPU to find."""
    env = {**SMALL, "DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(["bash", str(SCRIPT), "e2e"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={**os.environ, **env, "PYTHON": sys.executable,
                                                         "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "w")})
    assert result.returncode == 2
    assert result.stderr == ("error: Exp.device=cuda but no CUDA device is visible; use Exp.device=cpu or auto\n")
    assert not (tmp_path / "out" / "gpu_check.md").exists()
