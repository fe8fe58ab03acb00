"""Exp.share_learners: runs whose learner k would come out the same train it once, in the shared folder.

Learner k is a function of the settings it sees, the training images and its frozen seniors (training is seeded and
deterministic on one device). Learner 0 never sees the juniors' settings (Lambda, spread, the kind of repulsion),
and no learner sees the test set or the data set's name, so a study of repulsion options, or of two test sets that
share their training images (a class's semantic and local-defect sets), trains each learner once. Solver.precise_bn
acts only after a learner's last epoch: a run takes a copy finished the other way and finishes it again
(train.finish_again, from the statistics its training left, which the checkpoint keeps), so the published setting
and Lambda 0 with precise BN share learner 0 too. The key of learner k hashes exactly those inputs: the settings, a
fingerprint of the decoded training images, and of each senior's weights (after their finish: a junior of precise
seniors trains against other statistics); a copy is taken only under the same key, and its checkpoint's report says
which run trained it.
take() comes before a learner is trained and leave() after it; between the two, the key's lock is held. A run whose
learner another run is training waits for it, or, with wait=False (the grid runner's first try of a cell), raises
Busy when the lock stays taken for BUSY_AFTER_S, so that its worker can take another cell meanwhile.
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from utils.fingerprint import fingerprint
from utils.method import batchnorm
from utils.run import checkpoint, config, runlock

JUNIOR_ONLY = ("Solver.Lambda", "Solver.spread", "Model.repulsion", "Model.repel_on")  # learner 0 never uses them
FINISH_ONLY = ("Solver.precise_bn",)  # acts after the last epoch; a copy finished the other way is finished again
NOT_SEEN = ("Data.dataset",)  # training sees the images (fingerprinted), not the folder's name or its test set
BUSY_AFTER_S = 30.0  # wait=False: how long a lock may stay taken (a copy being written takes about a second)


class Busy(Exception):
    """Another run holds the lock of a learner this run would take: it is training it now."""


def key(cfg, index: int, images: str, seniors) -> str:
    """What learner `index` depends on, hashed: the experiment's settings but those it never sees, the training
    images' fingerprint and its seniors' weights. Only settings away from their defaults enter, so a setting added
    to the project later, at its default, leaves every key as it was."""
    unseen = (*config.GROWS, *NOT_SEEN, *FINISH_ONLY, *(JUNIOR_ONLY if index == 0 else ()))
    defaults = config.experiment(config.Config())
    settings = {name: value for name, value in config.experiment(cfg, without=unseen).items()
                if value != defaults[name]}
    settings.update(learner=index, training_images=images,
                    seniors=[fingerprint(senior.state_dict().values()) for senior in seniors])
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Share:
    """Learner `index`'s place in the shared folder while its key's lock is held (lock None: no sharing); closing it
    frees the lock, at the end of a `with` block however it ends."""
    cfg: object
    index: int
    copy: Path | None = None
    lock: object = None
    taken: bool = False

    def __enter__(self):
        return self

    def __exit__(self, *failure):
        if self.lock is not None:
            self.lock.close()


def finished_at(path, cfg):
    """The checkpoint at `path` when it holds a finished learner, else None."""
    if not path.is_file():
        return None
    state = checkpoint.load(path)
    return state if checkpoint.finished(state, cfg) else None


def usable(state, cfg) -> bool:
    """Whether this run can hold the copy: finished as it asks, or keeping what finishing it again starts from
    (copies left before the statistics were kept lack it)."""
    return batchnorm.finished_as(state["report"], cfg) or "trained_buffers" in state


def take(cfg, index, training_images, seniors, run_dir, log, wait=True) -> Share:
    """Before learner `index` is trained: its key's lock (waiting while another run trains it; with wait=False,
    Busy instead), and the shared copy put in run_dir when a run with the same key left one, so that training finds
    it finished. Without Exp.share_learners, a Share that does nothing."""
    if not cfg.Exp.share_learners:
        return Share(cfg, index)
    folder = Path(cfg.Exp.share_learners) / key(cfg, index, training_images, seniors)
    folder.mkdir(parents=True, exist_ok=True)
    lock = runlock.take(folder / ".lock", wait=None if wait else BUSY_AFTER_S)
    if lock is None:
        log.info(f"learner {index}: another run is training it; this run stops here and is resumed later")
        raise Busy(f"learner {index} is being trained by another run (shared folder {folder})")
    shared = Share(cfg, index, folder / f"learner_{index}.pt", lock)
    own = checkpoint.learner_path(run_dir, index)
    state = None if finished_at(own, cfg) else finished_at(shared.copy, cfg)
    if state and usable(state, cfg):
        log.info(f"learner {index}: taken from {shared.copy}, trained in {state['trained_in']} with the same inputs")
        report = {**(state["report"] or {}), "shared_from": state["trained_in"]}
        checkpoint.save({**state, "config": cfg.to_dict(), "report": report}, own)
        shared.taken = True
    return shared


def leave(shared: Share, run_dir) -> None:
    """After learner `index` is trained: a copy of it left for the other runs, unless one is there already."""
    if shared.lock is None or shared.taken or finished_at(shared.copy, shared.cfg):
        return
    state = checkpoint.load(checkpoint.learner_path(run_dir, shared.index))
    checkpoint.save({**state, "trained_in": str((state["report"] or {}).get("shared_from", run_dir))}, shared.copy)
