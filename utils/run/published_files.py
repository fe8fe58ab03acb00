"""The published D2UE code's learner files, read into this project's backbones and checked tensor by tensor.

The published trainer saves each learner as torch.save(model.state_dict(), <out_dir>/train/<k>.pth), from a model
on a CUDA device, and its evaluation reads them in numeric order of k.
"""
import hashlib
import io
import pickle
import re
import warnings
from pathlib import Path

import torch

from models import backbone_args, build
from models.published import our_name, published_name, settings_of
from utils.errors import UserError

FILE_NAME = re.compile(r"0|[1-9][0-9]*")  # <k>.pth, k written as the published trainer writes it


def learner_files(folder) -> list:
    """<folder>/train/<k>.pth for k = 0, 1, ... in numeric order; a gap or a file named otherwise is refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"published folder {folder} not found; pass the Exp.out_dir the published code trained in")
    train = folder / "train"
    found = sorted(path for path in train.glob("*.pth") if path.is_file())
    if not found:
        raise UserError(f"no published learners in {folder}: expected {train}/0.pth, 1.pth, ..., as the published "
                        "trainer writes them")
    numbered = {}
    for path in found:
        if not FILE_NAME.fullmatch(path.stem):
            raise UserError(f"{path} is not named <k>.pth (k = 0, 1, ...); move it out of {train}")
        numbered[int(path.stem)] = path
    missing = [f"{k}.pth" for k in range(max(numbered)) if k not in numbered]
    if missing:
        raise UserError(f"{train} has {', '.join(p.name for p in numbered.values())} but no {', '.join(missing)}: "
                        "learners are numbered 0, 1, ... without a gap; restore the missing file")
    return [numbered[k] for k in sorted(numbered)]


def read_state(path):
    """(state dict, sha256 of the file) of a published learner file, its tensors on the CPU (the files come from CUDA
    models), read without running pickled code."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise UserError(f"{path} cannot be read ({err.strerror})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on foreign pickle protocols would add lines
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path} holds Python objects besides tensors (a whole model?), not a state dict; save "
                        "model.state_dict() as the published trainer does") from None
    except Exception as err:  # cut short, corrupt, or not a torch file at all
        raise UserError(f"{path} cannot be read ({type(err).__name__}): cut short, or not written by torch.save")\
            from None
    if not (isinstance(state, dict) and state
            and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items())):
        held = f"a {type(state).__name__}" + (f" of {', '.join(map(repr, list(state)[:4]))}"
                                              if isinstance(state, dict) else "")
        raise UserError(f"{path} is not a state dict (tensor names to tensors) but {held}")
    return state, hashlib.sha256(data).hexdigest()


def learner_from(state, model_cfg, img_size, where):
    """The configured backbone holding a published state dict's tensors, after checking every tensor against it:
    the same names once mapped, the same shapes, the same dtypes (BatchNorm statistics included)."""
    learner = build(backbone_args(model_cfg, img_size))
    expected = learner.state_dict()
    renamed = {}
    for key, tensor in state.items():
        if our_name(key) is None:
            raise UserError(f"{where} holds {key}, which no published D2UE backbone has; is it a published learner?")
        renamed[our_name(key)] = tensor
    problems = []
    for name, want in expected.items():
        got = renamed.get(name)
        if got is None:
            problems.append(f"it lacks {published_name(name)}")
        elif got.shape != want.shape:
            problems.append(f"{published_name(name)} is {tuple(got.shape)} where the config needs {tuple(want.shape)}")
        elif got.dtype != want.dtype:
            problems.append(f"{published_name(name)} is {got.dtype} where the config needs {want.dtype}")
    problems += [f"it has {published_name(name)}, which Model.network={model_cfg.network} has not"
                 for name in renamed if name not in expected]
    if problems:
        given = {"Model.network": model_cfg.network, "Model.mp": model_cfg.mp, "Model.ls": model_cfg.ls,
                 "Model.mem_dim": model_cfg.mem_dim, "Data.img_size": img_size}
        differ = [f"{key}={value} (the config has {given[key]})" for key, value in settings_of(state).items()
                  if given[key] != value]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        fix = f"; its tensors are those of {', '.join(differ)}" if differ else ""
        raise UserError(f"{where} does not fit the config: {problems[0]}{more}{fix}")
    learner.load_state_dict(renamed)
    return learner
