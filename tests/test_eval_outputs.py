"""What eval.py leaves beside the numbers: pixel metrics, figures, TensorBoard, and the summary over seeds."""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

import eval as evaluate
import train
from datasets.medad import load_images, load_masks, read_split
from tests.conftest import REPO, write_config
from utils.method.dsu import SCORES, score_dataset
from utils.method.reference import IMAGE_SCORES
from utils.report.metrics import pixel_metrics_of_maps
from utils.run import checkpoint, config

PIXEL_KEYS = {"pixel_auroc", "pixel_ap", "pixel_best_dice"}


def train_and_eval(cfg, *overrides):
    train.main(["--config", str(cfg), *overrides])
    evaluate.main(["--config", str(cfg), *overrides])


def test_pixel_metrics_figures_and_tensorboard(tiny_root, tmp_path, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", Solver={"num_epoch": 1})
    train_and_eval(cfg_path)
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    printed = capsys.readouterr().out

    # The pixel metrics are those of the maps the stored learners give, against the masks (zero for normal images).
    cfg = config.load(cfg_path)
    split = read_split(tiny_root / "tiny")
    learners = checkpoint.load_learners(run, cfg, torch.device("cpu"))
    images = load_images(split.directory, split.test, cfg.Data.img_size)
    maps = score_dataset(learners, images, cfg.Exp.score_batch, torch.device("cpu")).maps
    masks = load_masks(split.directory, split.test, cfg.Data.img_size)
    labels = torch.tensor(split.test_labels)
    assert not masks[labels == 0].any() and masks[labels == 1].flatten(1).any(dim=1).all()
    for score in SCORES:
        expected = pixel_metrics_of_maps(masks.numpy(), {score: maps[score].numpy()})[score]
        assert expected.keys() == PIXEL_KEYS
        for key, value in expected.items():
            assert results[score][key] == pytest.approx(value, rel=1e-6), (score, key)
        assert 0 <= results[score]["chi2"] <= 1

    for name in ("hist.png", "roc_pr.png", "grid.png", "ensemble_size.png"):
        with Image.open(run / name) as image:
            image.verify()

    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for score in SCORES:
        for metric in ("auc", "ap", "chi2", *PIXEL_KEYS):
            assert f"eval/{score}_{metric}" in tags["scalars"]
        # an in-sample reference (Data.holdout=0): its false-alarm figures are too high, and say so by their names
        for metric in ("fpr05", "tpr05", "fdp10", "power10"):
            assert results[score][f"{metric}_in_sample"] == \
                pytest.approx(events.Scalars(f"eval/{score}_{metric}_in_sample")[-1].value)
            assert metric not in results[score] and f"eval/{score}_{metric}" not in tags["scalars"]
        assert results[score]["p_min"] == pytest.approx(events.Scalars(f"eval/{score}_p_min")[-1].value)
        assert events.Scalars(f"eval/{score}_auc")[-1].value == pytest.approx(results[score]["auc"])
        assert [event.step for event in events.Scalars(f"ensemble_size/{score}_auc")] == [2]
        assert events.Scalars(f"ensemble_size/{score}_pixel_auroc")[-1].value == \
            pytest.approx(results["ensemble_size"]["2"][score]["pixel_auroc"])
    header = next(line for line in printed.splitlines() if line.startswith("score ")).split()
    assert {"fpr05_in_sample", "fdp10_in_sample", "power10_in_sample", "p_min"} <= set(header)
    assert not {"fpr05", "tpr05", "fdp10", "power10"} & set(header)
    shown = {"input", "reconstruction", "mask", "rec_map", "unc_map", "dsu_map"}
    assert {f"test_images/{name}" for name in shown} <= set(tags["images"])
    hparams = events.PluginTagToContent("hparams")
    session = metadata.parse_session_start_info_plugin_data(hparams[metadata.SESSION_START_INFO_TAG]).hparams
    assert session["network"].string_value == "AE" and session["seed"].number_value == 3
    assert session["lr"].number_value == cfg.Solver.lr and session["num_learners"].number_value == 2
    experiment = metadata.parse_experiment_plugin_data(hparams[metadata.EXPERIMENT_TAG])
    assert "eval/dsu_auc" in {info.name.tag for info in experiment.metric_infos}


def test_the_curve_of_the_first_k_learners_is_a_run_trained_with_k_learners(tiny_root, tmp_path):
    """Learner k never depends on how many follow it: the curve's k = 2 row of a 3-learner run equals the results of
    a 2-learner run of the same seed and settings, and its k = 3 row equals the run's own results."""
    runs = {}
    for count in (3, 2):
        cfg = write_config(tmp_path / f"c{count}.yaml", tiny_root, tmp_path / f"run{count}",
                           Model={"num_learners": count}, Solver={"num_epoch": 1})
        train_and_eval(cfg)
        runs[count] = json.loads((tmp_path / f"run{count}" / "results.json").read_text())
    curve = runs[3]["ensemble_size"]
    assert list(curve) == ["2", "3"] and list(runs[2]["ensemble_size"]) == ["2"]
    for score in SCORES:
        assert curve["2"][score].keys() == {"auc", "ap", *PIXEL_KEYS}
        for key, value in curve["2"][score].items():
            assert value == runs[2][score][key], (score, key)  # bit for bit: the same passes, the same formulas
            assert runs[2]["ensemble_size"]["2"][score][key] == runs[2][score][key]
            assert curve["3"][score][key] == runs[3][score][key], (score, key)


def test_no_masks_no_pixel_metrics(tiny_root, tmp_path):
    shutil.copytree(tiny_root / "tiny", tmp_path / "data" / "tiny", ignore=lambda folder, names: ["masks"])
    assert not (tmp_path / "data" / "tiny" / "masks").exists()
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "data", tmp_path / "run", Solver={"num_epoch": 1})
    train_and_eval(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    for score in SCORES:
        assert {"auc", "ap", "chi2"} <= results[score].keys() and not PIXEL_KEYS & results[score].keys()
        assert not PIXEL_KEYS & results["ensemble_size"]["2"][score].keys()
    assert (tmp_path / "run" / "grid.png").is_file()


def read_summary(root):
    rows = list(csv.DictReader(open(root / "summary.csv")))
    assert (root / "summary.md").is_file() and [row["score"] for row in rows] == list(IMAGE_SCORES)
    return rows


def test_summary_over_two_seeds(tiny_root, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "runs" / "tiny_s{seed}", Solver={"num_epoch": 1})
    for seed in (1, 2):
        train_and_eval(cfg, f"Solver.seed={seed}")
    capsys.readouterr()
    evaluate.main(["--summary", str(tmp_path / "runs")])
    for row in read_summary(tmp_path / "runs"):
        assert row["n_seeds"] == "2" and row["seeds"] == "1 2"
        assert bool(row["pixel_auroc_mean"]) == (row["score"] in SCORES)  # referred scores have no map of their own
    aucs = [json.loads((tmp_path / "runs" / f"tiny_s{seed}" / "results.json").read_text())["dsu"]["auc"]
            for seed in (1, 2)]
    dsu = read_summary(tmp_path / "runs")[2]
    assert float(dsu["auc_mean"]) == pytest.approx(sum(aucs) / 2)
    assert "| dsu |" in capsys.readouterr().out


def test_summary_and_config_are_exclusive(capsys):
    for argv in ([], ["--config", "a.yaml", "--summary", "runs"]):
        with pytest.raises(SystemExit) as exit_info:
            evaluate.main(argv)
        assert exit_info.value.code == 2
    assert "one of the arguments --config --summary is required" in capsys.readouterr().err


def test_seeds_script(tiny_root, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "runs" / "tiny_s{seed}")
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", "scripts/seeds.sh", str(cfg), "2", "Solver.num_epoch=1"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    rows = read_summary(tmp_path / "runs")
    assert all(row["n_seeds"] == "2" and row["seeds"] == "1 2" for row in rows)
    assert "| dsu |" in result.stdout


def test_seeds_script_refuses_shared_run_folder(tiny_root, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run")
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", "scripts/seeds.sh", str(cfg), "2"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "has no {seed}" in result.stderr
    assert not (tmp_path / "run").exists()


SCORING_MEMORY = """
import resource, sys
import torch
import models
from utils.method.dsu import score_dataset
torch.set_num_threads(1)
learners = []
for seed in range(2):
    torch.manual_seed(seed)
    learners.append(models.build({"network": "AE", "img_size": 64, "mp": 1, "ls": 16, "layer": 4}).eval()
                    .requires_grad_(False))
images = torch.randint(0, 256, (int(sys.argv[1]), 1, 64, 64), dtype=torch.uint8)
score_dataset(learners, images[:16], 16, torch.device("cpu"))  # warm-up: kernels, allocator
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
maps = score_dataset(learners, images, 16, torch.device("cpu")).maps
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # ru_maxrss is in KiB on Linux
print(grown / sum(value.numel() * value.element_size() for value in maps.values()))
"""


def test_scoring_holds_the_maps_in_memory_once():
    """The peak memory of scoring grows by about the size of the maps it returns, not twice that, as
    it would if the per-batch maps were gathered and then concatenated."""
    result = subprocess.run([sys.executable, "-c", SCORING_MEMORY, "2000"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 1.4
