"""Self-describing learner checkpoints: written atomically, loaded without running pickled code.

A checkpoint holds the learner's weights, the backbone's constructor arguments, the resolved config, the number of
finished epochs, the optimizer state and the RNG state, so that eval.py rebuilds a learner from it alone and
train.py resumes from it.
"""
from pathlib import Path

import torch

from utils import config
from utils.atomic import atomic_write
from utils.errors import UserError

FORMAT = "d2ue-learner-1"
# Settings that define what a run folder holds. Exp (where and how to run), Data.root (where the data sits) and
# Model.num_learners (learner k does not depend on how many follow it) may change between runs of one experiment.
IDENTITY = ("Model", "Data.dataset", "Data.img_size", "Solver")
NOT_IDENTITY = ("Model.num_learners",)


def learner_path(run_dir, index: int) -> Path:
    return Path(run_dir) / f"learner_{index}.pt"


def save(state: dict, path) -> None:
    with atomic_write(path, "wb") as handle:
        torch.save({"format": FORMAT, **state}, handle)


def load(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; train first with the same config")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt or foreign pickles all end here
        raise UserError(f"checkpoint {path} cannot be read ({type(err).__name__}); delete it to retrain") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a D2UE learner checkpoint")
    return state


def _flatten(tree: dict, prefix="") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def identity(config: dict) -> dict:
    """The settings of a config (as a dict) that must agree for two runs to share a run folder."""
    return {key: value for key, value in _flatten(config).items()
            if key not in NOT_IDENTITY and any(key == part or key.startswith(part + ".") for part in IDENTITY)}


def check_same_experiment(stored: dict, current: dict, where) -> None:
    """Refuse to mix learners of two different configs in one run folder. A setting that a stored config lacks was
    added after it was written and counts as its default, which is the behaviour that run had."""
    defaults = identity(config.Config().to_dict())
    old, new = {**defaults, **identity(stored)}, {**defaults, **identity(current)}
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            raise UserError(f"{where} was made with {key}={old.get(key)!r} but this config has {new.get(key)!r}; "
                            "use another Exp.out_dir or the original config")
