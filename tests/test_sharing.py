"""Exp.share_learners: runs whose learner k would come out the same train it once, and each of them still holds
exactly the learners it would have trained itself."""
import fcntl
import json
import re
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import eval as evaluate
import models
import sweep
import train
from datasets.medad import training_set
from tests.conftest import run_main, write_config
from tests.test_pipeline import assert_same_weights, weights
from utils import seeding
from utils.grid import sharing
from utils.run import checkpoint, config, runlock
from utils.run.runtime import RunLog


def run(root, tmp_path, name, shared=None, dataset="tiny", **solver):
    exp = {"share_learners": str(shared)} if shared else {}
    path = write_config(tmp_path / f"{name}.yaml", root, tmp_path / name, Exp=exp, Data={"dataset": dataset},
                        Solver={"num_epoch": 2, **solver})
    cfg = config.load(path)
    if shared:  # as a grid runs a cell (sweep.run_cell)
        sweep.train_sharing(cfg, torch.device("cpu"))
    train.train(cfg, torch.device("cpu"), echo=False)
    return cfg


def trained_once(shared, index) -> int:
    """How many copies of learner `index` the shared folder holds (one per distinct key)."""
    return len(list(shared.glob(f"*/learner_{index}.pt")))


def taken(tmp_path, name) -> list:
    return re.findall(r"learner (\d+): taken from", (tmp_path / name / "train.log").read_text())


def test_variants_share_the_learner_0_they_would_have_trained(tiny_root, tmp_path):
    shared = tmp_path / "shared"
    run(tiny_root, tmp_path, "published", shared, Lambda=1.0)
    run(tiny_root, tmp_path, "weak", shared, Lambda=0.1)
    run(tiny_root, tmp_path, "alone", Lambda=0.1)  # no sharing: trains its own learners
    assert trained_once(shared, 0) == 1 and trained_once(shared, 1) == 2  # the juniors differ, learner 0 does not
    assert taken(tmp_path, "weak") == ["0"] and taken(tmp_path, "published") == []
    assert_same_weights(weights(tmp_path / "weak", 0), weights(tmp_path / "published", 0))
    assert_same_weights(weights(tmp_path / "weak", 0), weights(tmp_path / "alone", 0))
    assert_same_weights(weights(tmp_path / "weak", 1), weights(tmp_path / "alone", 1))  # and so the junior too
    assert not torch.equal(weights(tmp_path / "weak", 1)["encoder.0.0.weight"],
                           weights(tmp_path / "published", 1)["encoder.0.0.weight"])


def test_the_record_says_where_a_learner_came_from(tiny_root, tmp_path):
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
    run(tiny_root, tmp_path, "c", shared, lr=3e-4)
    assert trained_once(shared, 0) == 3 and trained_once(shared, 1) == 3
    assert all(taken(tmp_path, name) == [] for name in "abc")


@pytest.mark.parametrize("first, second", [(False, True), (True, False)])
def test_a_learner_finished_the_other_way_is_finished_again_as_training_it_here_would(tiny_root, tmp_path, first,
                                                                                         second):
    """Solver.precise_bn acts after the last epoch: the published setting and Lambda 0 with precise BN share
    learner 0, and the run that takes it holds the learner, report and scores it would have trained itself."""
    shared = tmp_path / "shared"
    run(tiny_root, tmp_path, "first", shared, Lambda=1.0, precise_bn=first)
    cfg = run(tiny_root, tmp_path, "second", shared, Lambda=0.0, precise_bn=second)
    alone = run(tiny_root, tmp_path, "alone", Lambda=0.0, precise_bn=second)
    assert taken(tmp_path, "second") == ["0"] and trained_once(shared, 0) == 1
    assert f"learner 0: trained in {tmp_path / 'first'}, finished again for Solver.precise_bn={second}" in (
        tmp_path / "second" / "train.log").read_text()
    for index in (0, 1):
        assert_same_weights(weights(tmp_path / "second", index), weights(tmp_path / "alone", index))
    statistics = "encoder.0.1.running_mean"
    assert not torch.equal(weights(tmp_path / "first", 0)[statistics], weights(tmp_path / "second", 0)[statistics])
    reports = [checkpoint.load(checkpoint.learner_path(tmp_path / name, 0))["report"] for name in ("second", "alone")]
    assert reports[0].pop("shared_from") == str(tmp_path / "first") and reports[0] == reports[1]
    for run_cfg in (cfg, alone):
        evaluate.evaluate(run_cfg, torch.device("cpu"), echo=False)
    assert (tmp_path / "second" / "scores.csv").read_text() == (tmp_path / "alone" / "scores.csv").read_text()

    # Run folders of the earlier protocol, where train.py finished a placed copy and kept trained_buffers in every
    # checkpoint: one stopped after the copy was placed unfinished (no report) is finished by the grid, as training
    # here would have; finished checkpoints holding trained_buffers are skipped and score as before.
    old = tmp_path / "old"
    old_cfg = config.load(write_config(tmp_path / "old.yaml", tiny_root, old, Exp={"share_learners": str(shared)},
                                       Solver={"num_epoch": 2, "Lambda": 0.0, "precise_bn": second}))
    (copy,) = shared.glob("*/learner_0.pt")
    state = checkpoint.load(copy)
    old.mkdir()
    checkpoint.save({**state, "model": {**state["model"], **state["trained_buffers"]}, "report": None,
                     "config": old_cfg.to_dict()}, checkpoint.learner_path(old, 0))
    log = RunLog(old, "train", echo=False)
    with sharing.take(old_cfg, 0, training_set(old_cfg), torch.device("cpu"), old, log) as placed:
        assert placed.taken
    log.close()
    assert_same_weights(weights(old, 0), weights(tmp_path / "alone", 0))
    report = checkpoint.load(checkpoint.learner_path(old, 0))["report"]
    assert report.pop("shared_from") == str(tmp_path / "first") and report == reports[1]
    scores = (tmp_path / "alone" / "scores.csv").read_text()
    for index in (0, 1):
        path = checkpoint.learner_path(tmp_path / "alone", index)
        state = checkpoint.load(path)
        checkpoint.save({**state, "trained_buffers": {name: value + 1 for name, value in state["model"].items()
                                                      if "running" in name}}, path)
    train.train(alone, torch.device("cpu"), echo=False)
    evaluate.evaluate(alone, torch.device("cpu"), echo=False)
    assert "finished earlier" in (tmp_path / "alone" / "train.log").read_text()
    assert (tmp_path / "alone" / "scores.csv").read_text() == scores


def test_a_copy_left_before_the_trained_statistics_were_kept_is_not_taken_to_finish_the_other_way(tiny_root,
                                                                                                   tmp_path):
    shared = tmp_path / "shared"
    run(tiny_root, tmp_path, "first", shared, precise_bn=True)
    (copy,) = shared.glob("*/learner_0.pt")
    state = checkpoint.load(copy)
    del state["trained_buffers"]
    checkpoint.save(state, copy)
    run(tiny_root, tmp_path, "second", shared, precise_bn=False)
    assert taken(tmp_path, "second") == []  # trained its own instead of holding precise statistics
    statistics = "encoder.0.1.running_mean"
    assert not torch.equal(weights(tmp_path / "first", 0)[statistics], weights(tmp_path / "second", 0)[statistics])


def twin(tiny_root, tmp_path, name, change_pixel=False):
    """A copy of the tiny data set under another name and root, with a smaller test set (half its normal test
    images); with change_pixel, one training image differs in one pixel."""
    root = tmp_path / f"{name}_root"
    shutil.copytree(tiny_root / "tiny", root / name)
    lists = json.loads((root / name / "data.json").read_text())
    lists["test"]["0"] = lists["test"]["0"][::2]
    (root / name / "data.json").write_text(json.dumps(lists))
    if change_pixel:
        path = root / name / "images" / lists["train"]["0"][5]
        pixels = np.array(Image.open(path))
        pixels[20:22, 20:22] = 255 - pixels[20:22, 20:22]  # a 2 x 2 block: survives the resize to 32
        Image.fromarray(pixels).save(path)
    return root


def test_a_data_set_with_the_same_training_images_takes_every_learner_and_is_scored_on_its_own_test_set(
        tiny_root, tmp_path):
    """A class's semantic and local-defect sets share their training images: the second run trains nothing,
    holds the learners it would have trained alone, and is scored on its own test set."""
    shared = tmp_path / "shared"
    first = run(tiny_root, tmp_path, "semantic", shared)
    same = twin(tiny_root, tmp_path, "local")
    second = run(same, tmp_path, "local", shared, dataset="local")
    run(same, tmp_path, "local_alone", dataset="local")
    assert taken(tmp_path, "local") == ["0", "1"]
    for index in (0, 1):
        assert_same_weights(weights(tmp_path / "local", index), weights(tmp_path / "local_alone", index))
    scores = [evaluate.evaluate(cfg, torch.device("cpu"), echo=False) for cfg in (first, second)]
    assert scores[0]["dsu"]["auc"] != scores[1]["dsu"]["auc"] or scores[0]["rec"]["ap"] != scores[1]["rec"]["ap"]
    assert len((tmp_path / "local" / "scores.csv").read_text().splitlines()) == 1 + 4 + 8  # its own test set

    changed = twin(tiny_root, tmp_path, "changed", change_pixel=True)
    run(changed, tmp_path, "changed", shared, dataset="changed")
    assert taken(tmp_path, "changed") == []  # one training pixel differs: every learner trained again
    assert trained_once(shared, 0) == 2 and trained_once(shared, 1) == 2


def test_train_py_alone_refuses_share_learners_and_names_sweep_py(tiny_root, tmp_path):
    """train.py run directly would store Exp.share_learners and ignore it: it trains every learner itself."""
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run")
    result = run_main("train.py", "--config", cfg, f"Exp.share_learners={tmp_path / 'shared'}")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "Exp.share_learners" in result.stderr and "sweep.py --grid" in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "shared").exists()


def test_the_key_holds_what_a_learner_sees_and_nothing_else(tiny_root, tmp_path):
    cfg = config.load(write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run"))
    seeding.seed_learner(cfg.Solver.seed, 0)
    senior = {"model": models.build(models.backbone_args(cfg.Model, cfg.Data.img_size)).state_dict()}
    images = sharing.fingerprint([torch.zeros(4, 1, 8, 8, dtype=torch.uint8)])
    key = sharing.key(cfg, 1, images, [senior])

    def variant(**changes):
        raw = cfg.to_dict()
        for name, value in changes.items():
            section, field = name.split("__")
            raw[section][field] = value
        return config.from_dict(raw)

    # not seen by any learner: the data set's name and root, how many learners follow
    assert sharing.key(variant(Data__dataset="other", Data__root="/elsewhere", Model__num_learners=5), 1, images,
                       [senior]) == key
    # seen by a junior but not by learner 0: the juniors' settings
    assert sharing.key(variant(Solver__Lambda=0.5), 1, images, [senior]) != key
    assert sharing.key(variant(Solver__Lambda=0.5), 0, images, []) == sharing.key(cfg, 0, images, [])
    # seen by every learner: its index, the images, every other setting, each senior's weights
    assert sharing.key(cfg, 2, images, [senior]) != key
    assert sharing.key(cfg, 1, sharing.fingerprint([torch.ones(4, 1, 8, 8, dtype=torch.uint8)]), [senior]) != key
    assert sharing.key(variant(Solver__seed=9), 1, images, [senior]) != key
    # acting after training: precise BN reaches a junior's key through its seniors' weights alone
    assert sharing.key(variant(Solver__precise_bn=True), 1, images, [senior]) == key
    with torch.no_grad():
        next(iter(senior["model"].values())).view(-1)[0] += 1e-6
    assert sharing.key(cfg, 1, images, [senior]) != key


def test_a_lock_freed_within_the_grace_is_taken_and_one_held_longer_is_not(tmp_path):
    """A grid's first try of a cell waits BUSY_AFTER_S for a learner's lock: long enough for another run to write
    its copy, far shorter than training it."""
    path = tmp_path / ".lock"
    with open(path, "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert not runlock.take(path, 0.2)
        threading.Timer(0.3, holder.close).start()  # closing the file releases its lock
        assert runlock.take(path, 10)


def test_a_setting_at_its_default_leaves_every_key_as_it_was(tiny_root, tmp_path, monkeypatch):
    """A setting added to the project later, at its default, must not re-key the learners already shared."""
    cfg = config.load(write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", Solver={"Lambda": 0.5}))
    images = sharing.fingerprint([torch.zeros(4, 1, 8, 8, dtype=torch.uint8)])
    before = [sharing.key(cfg, index, images, []) for index in (0, 1)]
    experiment = config.experiment

    def with_a_new_setting(settings, without=()):  # as if the project had gained Model.new with default 0
        return {**experiment(settings, without), "Model.new": 0}

    monkeypatch.setattr(config, "experiment", with_a_new_setting)
    assert [sharing.key(cfg, index, images, []) for index in (0, 1)] == before
