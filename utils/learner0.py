"""Exp.share_learner0: runs that differ only in the juniors' settings train learner 0 once.

Learner 0 trains on the reconstruction loss alone, so the juniors' settings never reach it: a study of many
repulsion options can train it once per data set and seed. The run that trains it leaves a copy in the shared
folder; a run with the same key takes that copy, and its checkpoint's report says where it came from.
"""
import fcntl
import hashlib
import json
from pathlib import Path

from datasets.medad import dataset_dir
from utils import checkpoint, config

JUNIOR_ONLY = ("Solver.Lambda", "Solver.spread", "Model.repulsion")  # settings learner 0 never uses


def key(cfg) -> str:
    """What learner 0 depends on (the experiment's identity but the juniors' settings, and the data's folder) as a
    short hash: runs with the same key train the same learner 0."""
    settings = config.experiment(cfg, without=(*config.GROWS, *JUNIOR_ONLY))
    settings["data"] = str(dataset_dir(cfg.Data.root, cfg.Data.dataset).resolve())
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def finished(path, cfg):
    """The checkpoint at `path` when it holds a finished learner, else None."""
    if not path.is_file():
        return None
    state = checkpoint.load(path)
    return state if state["epoch"] >= cfg.Solver.num_epoch else None


def shared(cfg, run_dir, log, train_learner0):
    """Learner 0 of the run: the shared copy when a run with the same key left one, else train_learner0() (which
    trains, resumes or skips it in run_dir) and a copy left for the others. A lock per key makes a run wait while
    another trains that learner 0."""
    folder = Path(cfg.Exp.share_learner0) / key(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    copy, own = folder / "learner_0.pt", checkpoint.learner_path(run_dir, 0)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process ends
        state = None if finished(own, cfg) else finished(copy, cfg)
        if state:
            log.info(f"learner 0: taken from {copy}, trained in {state['trained_in']} with the same settings "
                     "but the juniors'")
            report = {**(state["report"] or {}), "shared_from": state["trained_in"]}
            checkpoint.save({**state, "config": cfg.to_dict(), "report": report}, own)
        learner = train_learner0()
        if not finished(copy, cfg):
            state = checkpoint.load(own)
            checkpoint.save({**state, "trained_in": str(state["report"].get("shared_from", run_dir))}, copy)
    return learner
