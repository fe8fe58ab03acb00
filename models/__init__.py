"""Backbone registry. Every backbone follows one contract:

forward(x) -> dict with "x_hat" and "features" (the tapped feature RAR repels), optionally "log_var" or "att", where
x = to_model_input(uint8 images); loss(out, x) -> (loss, named terms); score_error(out, x) -> per-pixel error DSU
differentiates; pixel_variance(out) -> per-pixel variance that normalises the scores.
"""
import inspect

import torch

from models.ae import AE, TAPS
from models.aeu import AEU
from models.memae import MemAE

MODELS = {"AE": AE, "AE-U": AEU, "MemAE": MemAE}


def backbone_args(model_cfg, img_size) -> dict:
    """The constructor arguments of the configured backbone: what a checkpoint stores to rebuild it."""
    cls = MODELS[model_cfg.network]
    names = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "img_size")]
    return {"network": model_cfg.network, "img_size": img_size,
            **{name: getattr(model_cfg, name) for name in names}}


def build(args: dict):
    args = dict(args)
    return MODELS[args.pop("network")](**args)


def to_model_input(images_u8) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1], on the same device: what every backbone takes."""
    return (images_u8.float() / 255 - 0.5) / 0.5


def place(model, device):
    """Move a model to its device. On the CPU, channels-last weights let oneDNN pick faster convolutions; on CUDA the
    default layout is kept."""
    if torch.device(device).type == "cpu":
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


__all__ = ["MODELS", "TAPS", "backbone_args", "build", "place", "to_model_input"]
