"""Self-describing learner checkpoints: written atomically, loaded without running pickled code, and the learners of a
run rebuilt from them.

A checkpoint holds the learner's weights, the backbone's constructor arguments, the resolved config, the number of
finished epochs, the optimizer state and the RNG state, so that eval.py rebuilds a learner from it alone and
train.py resumes from it.
"""
from pathlib import Path

import torch

import models
from utils.atomic import atomic_write
from utils.errors import UserError
from utils.run import config
from utils.run.runtime import existing_run_dir, set_tf32

FORMAT = "d2ue-learner-1"


def learner_path(run_dir, index: int) -> Path:
    return Path(run_dir) / f"learner_{index}.pt"


def save(state: dict, path) -> None:
    with atomic_write(path, "wb") as handle:
        torch.save({"format": FORMAT, **state}, handle)


def load(path, cfg=None) -> dict:
    """The checkpoint at `path`; given a config, refused when it was made for another experiment."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; train first with the same config")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt or foreign pickles all end here
        raise UserError(f"checkpoint {path} cannot be read ({type(err).__name__}); delete it to retrain") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a D2UE learner checkpoint")
    if cfg is not None:
        check_same_experiment(state["config"], cfg.to_dict(), f"checkpoint {path}")
    return state


def finished(state, cfg) -> bool:
    """Whether a checkpoint holds a learner trained for all of the config's epochs."""
    return state["epoch"] >= cfg.Solver.num_epoch


def check_same_experiment(stored: dict, current: dict, where) -> None:
    """Refuse to mix learners of two different experiments (utils/run/config.py decides what one is) in one run
    folder."""
    old, new = config.experiment(stored, without=config.GROWS), config.experiment(current, without=config.GROWS)
    for key in old:
        if old[key] != new[key]:
            raise UserError(f"{where} was made with {key}={old[key]!r} but this config has {new[key]!r}; "
                            "use another Exp.out_dir or the original config")


def check_run_folder(run_dir, cfg) -> None:
    """Refuse a run folder whose stored config.yaml is another experiment's, or names an option this project no
    longer has at another value (config.REMOVED): what train.py, eval.py and predict.py would otherwise mix."""
    stored = Path(run_dir) / "config.yaml"
    if stored.is_file():
        check_same_experiment(config.load(stored).to_dict(), cfg.to_dict(), f"run folder {run_dir}")


def imported_from(run_dir):
    """The record of where a run's learners came from when scripts/import_published.py made its folder (all of its
    learners are imported: the first one's checkpoint says it), else None."""
    path = learner_path(run_dir, 0)
    return load(path).get("imported") if path.is_file() else None


def load_states(run_dir, cfg) -> list:
    """Every learner's checkpoint of the run, each of this experiment and finished."""
    states = []
    for index in range(cfg.Model.num_learners):
        state = load(learner_path(run_dir, index), cfg)
        if not finished(state, cfg):
            raise UserError(f"learner {index} in {run_dir} has {state['epoch']} of {cfg.Solver.num_epoch} epochs; "
                            "rerun train.py with the same config to finish it")
        states.append(state)
    return states


def rebuild(state, device):
    """The learner of a checkpoint, frozen and in eval mode."""
    learner = models.build(state["backbone"])
    learner.load_state_dict(state["model"])
    return models.place(learner, device).eval().requires_grad_(False)


def load_learners(run_dir, cfg, device) -> list:
    """Every learner of the run, rebuilt from its checkpoint (load_states), frozen and in eval mode."""
    return [rebuild(state, device) for state in load_states(run_dir, cfg)]


def load_run(run_dir, device):
    """The resolved config stored in a run folder and its K learners, frozen and in eval mode."""
    run_dir = existing_run_dir(run_dir)
    stored = run_dir / "config.yaml"
    if not stored.is_file():
        raise UserError(f"{run_dir} has no config.yaml; pass the run folder that train.py wrote")
    cfg = config.load(stored)
    set_tf32(cfg.Exp.tf32)
    return cfg, load_learners(run_dir, cfg, device)
