"""Self-describing learner checkpoints: written atomically, loaded without running pickled code.

A checkpoint holds the learner's weights, the backbone's constructor arguments, the resolved config, the number of
finished epochs, the optimizer state and the RNG state, so that eval.py rebuilds a learner from it alone and
train.py resumes from it.
"""
from pathlib import Path

import torch

from utils.atomic import atomic_write
from utils.errors import UserError
from utils.run import config

FORMAT = "d2ue-learner-1"


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


def check_same_experiment(stored: dict, current: dict, where) -> None:
    """Refuse to mix learners of two different experiments (utils/run/config.py decides what one is) in one run
    folder."""
    old, new = config.experiment(stored, without=config.GROWS), config.experiment(current, without=config.GROWS)
    for key in old:
        if old[key] != new[key]:
            raise UserError(f"{where} was made with {key}={old[key]!r} but this config has {new[key]!r}; "
                            "use another Exp.out_dir or the original config")


def imported_from(run_dir):
    """The record of where a run's learners came from when scripts/import_published.py made its folder (all of its
    learners are imported: the first one's checkpoint says it), else None."""
    path = learner_path(run_dir, 0)
    return load(path).get("imported") if path.is_file() else None
