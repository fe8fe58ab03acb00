"""Exp.share_learners: runs of a grid whose learner k would come out the same train it once, in the shared folder.

Learner k is a function of the settings it sees, the training images and its frozen seniors (training is seeded and
deterministic on one device). Learner 0 never sees Solver.Lambda, and no learner sees the test set or the data set's
name, so a study of Lambda, or of two test sets that share their training images (a class's semantic and
local-defect sets), trains each learner once. Solver.precise_bn acts only after a learner's last epoch: the shared
copy keeps the BatchNorm statistics its training left (trained_buffers), and a run that asks for the other finish
gets the copy finished here from them, as train.py would have finished it. The key of learner k hashes exactly those
inputs: the settings, a fingerprint of the decoded training images, and each senior's weights (after their finish: a
junior of precise seniors trains against other statistics).

The grid runner (sweep.py) calls take() before learner k is trained and leave() after; between the two, the key's
lock is held. train.py knows nothing of this: it finds a placed copy finished and skips it.
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import models
from models import to_model_input
from utils.fingerprint import fingerprint
from utils.method import batchnorm, feature_shape
from utils.run import checkpoint, config, runlock

JUNIOR_ONLY = ("Solver.Lambda",)  # learner 0 never uses them
FINISH_ONLY = ("Solver.precise_bn",)  # acts after the last epoch; a copy finished the other way is finished again
NOT_SEEN = ("Data.dataset",)  # training sees the images (fingerprinted), not the folder's name or its test set
BUSY_AFTER_S = 30.0  # wait=False: how long a lock may stay taken (a copy being written takes about a second)


class Busy(Exception):
    """Another run holds the lock of a learner this run would take: it is training it now."""


def key(cfg, index: int, images: str, seniors: list) -> str:
    """What learner `index` depends on, hashed: the experiment's settings but those it never sees, the training
    images' fingerprint and its seniors' weights (their checkpoints' "model"). Only settings away from their
    defaults enter, so a setting added to the project later, at its default, leaves every key as it was."""
    unseen = (*config.GROWS, *NOT_SEEN, *FINISH_ONLY, *(JUNIOR_ONLY if index == 0 else ()))
    defaults = config.experiment(config.Config())
    settings = {name: value for name, value in config.experiment(cfg, without=unseen).items()
                if value != defaults[name]}
    settings.update(learner=index, training_images=images,
                    seniors=[fingerprint(senior["model"].values()) for senior in seniors])
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Share:
    """Learner `index`'s place in the shared folder while its key's lock is held; closing it frees the lock, at the
    end of a `with` block however it ends. taken: a copy was placed in the run folder."""
    cfg: object
    index: int
    copy: Path
    lock: object
    taken: bool = False

    def __enter__(self):
        return self

    def __exit__(self, *failure):
        self.lock.close()


def finished_at(path, cfg):
    """The checkpoint at `path` when it holds a finished learner, else None."""
    if not path.is_file():
        return None
    state = checkpoint.load(path)
    return state if checkpoint.finished(state, cfg) else None


def take(cfg, index, training, device, run_dir, log, wait=True) -> Share:
    """Before learner `index` is trained: its key's lock (waiting while another run trains it; with wait=False,
    Busy instead), and the shared copy placed in run_dir, finished as cfg asks, when a run with the same key left
    one. training: the run's datasets.medad.TrainingSet. The seniors are the run folder's learners 0 .. index - 1,
    which must be there."""
    seniors = [checkpoint.load(checkpoint.learner_path(run_dir, j)) for j in range(index)]
    folder = Path(cfg.Exp.share_learners) / key(cfg, index, training.fingerprint, seniors)
    folder.mkdir(parents=True, exist_ok=True)
    lock = runlock.take(folder / ".lock", wait=None if wait else BUSY_AFTER_S)
    if lock is None:
        log.info(f"learner {index}: another run is training it; this run stops here and is resumed later")
        raise Busy(f"learner {index} is being trained by another run (shared folder {folder})")
    shared = Share(cfg, index, folder / f"learner_{index}.pt", lock)
    own = checkpoint.learner_path(run_dir, index)
    state = finished_at(own, cfg)
    if state is None:
        state = finished_at(shared.copy, cfg)
        if state is None or not (batchnorm.finished_as(state["report"], cfg) or "trained_buffers" in state):
            return shared  # none yet, or a copy left before the trained statistics were kept: train it here
        log.info(f"learner {index}: taken from {shared.copy}, trained in {state['trained_in']} with the same inputs")
        if not batchnorm.finished_as(state["report"], cfg):  # back to the statistics its training left
            state = {**state, "model": {**state["model"], **state["trained_buffers"]}, "report": None}
    elif state["report"] is not None:
        return shared  # trained or placed here before
    # report None: a copy finished the other way, or one an earlier version placed so, for train.py to finish
    if state["report"] is None:
        log.info(f"learner {index}: trained in {state['trained_in']}, finished again for Solver.precise_bn="
                 f"{cfg.Solver.precise_bn}")
        state = finish(state, cfg, training, device, log)
    placed = {name: value for name, value in state.items() if name != "trained_buffers"}
    checkpoint.save({**placed, "config": cfg.to_dict(),
                     "report": {**state["report"], "shared_from": state["trained_in"]}}, own)
    shared.taken = True
    return shared


def finish(state, cfg, training, device, log) -> dict:
    """A checkpoint whose learner is as its last epoch left it, finished as cfg asks (batchnorm.finish_learner) on
    the run's training images, as train.py finishes the learners it trains."""
    learner = models.place(models.build(state["backbone"]), device)
    learner.load_state_dict(state["model"])
    images = to_model_input(training.images.to(device))
    report = batchnorm.finish_learner(state["learner"], learner, images,
                                      feature_shape.probe_of(images, cfg.Solver.seed), cfg, log)
    return {**state, "model": learner.state_dict(), "report": report}


def leave(shared: Share, run_dir, trained_buffers=None) -> None:
    """After learner `index` is trained (and finished) in run_dir, a learner trained here is left for the other runs
    unless a copy is there already, with trained_buffers: its BatchNorm statistics as its training left them (from
    train.train's on_trained), from which a run that asks for the other finish finishes it."""
    if shared.taken or finished_at(shared.copy, shared.cfg):
        return
    state = checkpoint.load(checkpoint.learner_path(run_dir, shared.index))
    if trained_buffers is None:  # trained by an earlier launch: its checkpoint kept them before this version
        trained_buffers = state.get("trained_buffers")
    if trained_buffers is not None:
        state = {**state, "trained_buffers": trained_buffers}
    checkpoint.save({**state, "trained_in": str(run_dir)}, shared.copy)
