"""Exp.share_learner0: runs that differ only in the juniors' settings train learner 0 once, and each of them still
holds exactly the learner 0 it would have trained itself."""
import json

import torch

import eval as evaluate
import train
from tests.conftest import write_config
from tests.test_pipeline import assert_same_weights, weights
from utils import config


def run(tiny_root, tmp_path, name, shared=None, **solver):
    exp = {"share_learner0": str(shared)} if shared else {}
    path = write_config(tmp_path / f"{name}.yaml", tiny_root, tmp_path / name, Exp=exp,
                        Solver={"num_epoch": 2, **solver})
    cfg = config.load(path)
    train.train(cfg, torch.device("cpu"), echo=False)
    return cfg


def test_variants_share_the_learner_0_they_would_have_trained(tiny_root, tmp_path):
    shared = tmp_path / "shared"
    run(tiny_root, tmp_path, "published", shared, Lambda=1.0)
    run(tiny_root, tmp_path, "weak", shared, Lambda=0.1, spread=0.5)
    run(tiny_root, tmp_path, "alone", Lambda=0.1, spread=0.5)  # no sharing: trains its own learner 0
    assert len(list(shared.iterdir())) == 1  # one key: learner 0 was trained once
    assert "learner 0: taken from" in (tmp_path / "weak" / "train.log").read_text()
    assert "taken from" not in (tmp_path / "published" / "train.log").read_text()
    assert_same_weights(weights(tmp_path / "weak", 0), weights(tmp_path / "published", 0))
    assert_same_weights(weights(tmp_path / "weak", 0), weights(tmp_path / "alone", 0))
    assert_same_weights(weights(tmp_path / "weak", 1), weights(tmp_path / "alone", 1))  # and so the junior too
    assert not torch.equal(weights(tmp_path / "weak", 1)["encoder.0.0.weight"],
                           weights(tmp_path / "published", 1)["encoder.0.0.weight"])


def test_the_record_says_where_learner_0_came_from(tiny_root, tmp_path):
    shared = tmp_path / "shared"
    run(tiny_root, tmp_path, "first", shared, Lambda=1.0)
    cfg = run(tiny_root, tmp_path, "second", shared, Lambda=0.0)
    results = evaluate.evaluate(cfg, torch.device("cpu"), echo=False)
    reports = results["diagnostics"]["learners"]
    assert reports[0]["shared_from"] == str(tmp_path / "first") and "shared_from" not in (reports[1] or {})
    assert json.loads((tmp_path / "second" / "results.json").read_text())["diagnostics"]["learners"][0][
        "shared_from"] == str(tmp_path / "first")


def test_another_seed_or_learner_0_setting_trains_its_own(tiny_root, tmp_path):
    shared = tmp_path / "shared"
    run(tiny_root, tmp_path, "a", shared)
    run(tiny_root, tmp_path, "b", shared, seed=4)
    run(tiny_root, tmp_path, "c", shared, precise_bn=True)
    assert len(list(shared.iterdir())) == 3
    assert all("taken from" not in (tmp_path / name / "train.log").read_text() for name in "abc")
