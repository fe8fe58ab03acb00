"""Exp.share_learners: runs whose learner k would come out the same train it once, in the shared folder.

Learner k is a function of the settings it sees, the training images and its frozen seniors (training is seeded and
deterministic on one device). Learner 0 never sees the juniors' settings (Lambda, spread, the kind of repulsion),
and no learner sees the test set or the data set's name, so a study of repulsion options, or of two test sets that
share their training images (a class's semantic and local-defect sets), trains each learner once. The key of
learner k hashes exactly those inputs: the settings, a fingerprint of the decoded training images, and of each
senior's weights; a copy is taken only under the same key, and its checkpoint's report says which run trained it.
A run whose learner another run is training waits for it, or, with wait=False (the grid runner's first try of a
cell), raises Busy when the lock stays taken for BUSY_AFTER_S, so that its worker can take another cell meanwhile.
"""
import fcntl
import hashlib
import json
import time
from pathlib import Path

import torch

from utils.run import checkpoint, config

JUNIOR_ONLY = ("Solver.Lambda", "Solver.spread", "Model.repulsion", "Model.repel_on")  # learner 0 never uses them
NOT_SEEN = ("Data.dataset",)  # training sees the images (fingerprinted), not the folder's name or its test set


BUSY_AFTER_S = 30.0  # wait=False: how long a lock may stay taken (a copy being written takes about a second)


def take_lock_within(lock, seconds) -> bool:
    """Take the exclusive lock on the open file `lock` if it comes free within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


class Busy(Exception):
    """Another run holds the lock of a learner this run would take: it is training it now."""


def fingerprint(tensors) -> str:
    """sha256 of the tensors' shapes, dtypes and bytes, in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()  # the bytes in logical order, whatever the memory format
        digest.update(f"{tuple(tensor.shape)} {tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def key(cfg, index: int, images: str, seniors) -> str:
    """What learner `index` depends on, hashed: the experiment's settings but those it never sees, the training
    images' fingerprint and its seniors' weights. Only settings away from their defaults enter, so a setting added
    to the project later, at its default, leaves every key as it was."""
    unseen = (*config.GROWS, *NOT_SEEN, *(JUNIOR_ONLY if index == 0 else ()))
    defaults = config.experiment(config.Config())
    settings = {name: value for name, value in config.experiment(cfg, without=unseen).items()
                if value != defaults[name]}
    settings.update(learner=index, training_images=images,
                    seniors=[fingerprint(senior.state_dict().values()) for senior in seniors])
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def finished(path, cfg):
    """The checkpoint at `path` when it holds a finished learner, else None."""
    if not path.is_file():
        return None
    state = checkpoint.load(path)
    return state if state["epoch"] >= cfg.Solver.num_epoch else None


def shared(cfg, index, learner_key, run_dir, log, train_learner, wait=True):
    """Learner `index` of the run: the shared copy when a run with the same key left one, else train_learner()
    (which trains, resumes or skips it in run_dir) and a copy left for the others. A lock per key makes a run wait
    while another trains that learner; with wait=False it raises Busy instead."""
    folder = Path(cfg.Exp.share_learners) / learner_key
    folder.mkdir(parents=True, exist_ok=True)
    copy, own = folder / f"learner_{index}.pt", checkpoint.learner_path(run_dir, index)
    with open(folder / ".lock", "a") as lock:
        if wait:  # the lock goes when the file closes, or when the process ends
            fcntl.flock(lock, fcntl.LOCK_EX)
        elif not take_lock_within(lock, BUSY_AFTER_S):
            log.info(f"learner {index}: another run is training it; this run stops here and is resumed later")
            raise Busy(f"learner {index} is being trained by another run (shared folder {folder})")
        state = None if finished(own, cfg) else finished(copy, cfg)
        if state:
            log.info(f"learner {index}: taken from {copy}, trained in {state['trained_in']} with the same inputs")
            report = {**(state["report"] or {}), "shared_from": state["trained_in"]}
            checkpoint.save({**state, "config": cfg.to_dict(), "report": report}, own)
        learner = train_learner()
        if state is None and not finished(copy, cfg):  # a copy taken is there already
            state = checkpoint.load(own)
            checkpoint.save({**state, "trained_in": str((state["report"] or {}).get("shared_from", run_dir))}, copy)
    return learner
