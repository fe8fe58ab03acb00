"""A trained ensemble as a whole: its learners rebuilt from their checkpoints, their tapped features, and the
three scores of a whole image set in batches. Shared by eval.py, predict.py, the grid runner and the figures."""
from pathlib import Path

import torch

import models
from models import to_model_input
from utils.errors import UserError
from utils.method.scores import SCORES, image_scores, input_gradient, score_maps
from utils.run import checkpoint, config
from utils.run.runtime import set_tf32


def load_learners(run_dir, cfg, device):
    """Rebuild every learner from its checkpoint, frozen and in eval mode; refuse unfinished or foreign ones."""
    learners = []
    for index in range(cfg.Model.num_learners):
        path = checkpoint.learner_path(run_dir, index)
        state = checkpoint.load(path)
        checkpoint.check_same_experiment(state["config"], cfg.to_dict(), f"checkpoint {path}")
        if state["epoch"] < cfg.Solver.num_epoch:
            raise UserError(f"learner {index} in {run_dir} has {state['epoch']} of {cfg.Solver.num_epoch} epochs; "
                            "rerun train.py with the same config to finish it")
        learner = models.build(state["backbone"])
        learner.load_state_dict(state["model"])
        learners.append(models.place(learner, device).eval().requires_grad_(False))
    return learners


def learner_reports(run_dir, count) -> list:
    """What training recorded about each learner at its end (eval- against train-mode reconstruction, precise
    BatchNorm statistics): the checkpoints' "report", None for a checkpoint without one."""
    return [checkpoint.load(checkpoint.learner_path(run_dir, index)).get("report") for index in range(count)]


def load_run(run_dir, device):
    """The resolved config stored in a run folder and its K learners, frozen and in eval mode."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} not found; train first (e.g. ./scripts/demo.sh makes runs/demo_AE)")
    stored = run_dir / "config.yaml"
    if not stored.is_file():
        raise UserError(f"{run_dir} has no config.yaml; pass the run folder that train.py wrote")
    cfg = config.load(stored)
    set_tf32(cfg.Exp.tf32)
    return cfg, load_learners(run_dir, cfg, device)


@torch.no_grad()
def features_of(learner, images, batch_size=256):
    """A frozen learner's tapped features for a whole image tensor (exact: eval mode, no augmentation)."""
    return torch.cat([learner(images[i:i + batch_size])["features"] for i in range(0, len(images), batch_size)])


def input_gradients_of(learner, images, batch_size=256):
    """A frozen learner's input gradients for a whole image tensor (eval mode: exact per image)."""
    parts = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].detach().requires_grad_(True)
        with torch.enable_grad():
            parts.append(input_gradient(learner, learner(x), x))
    return torch.cat(parts)


@torch.no_grad()
def features_of_images(learners, images_u8, device, batch_size=256) -> list:
    """Every learner's tapped features of uint8 images, decoded to model input one batch at a time."""
    features = [[] for _ in learners]
    for start in range(0, len(images_u8), batch_size):
        x = to_model_input(images_u8[start:start + batch_size].to(device))
        for parts, learner in zip(features, learners):
            parts.append(learner(x)["features"])
    return [torch.cat(parts) for parts in features]


def score_dataset(learners, images_u8, batch_size, device):
    """Pixel maps (float32, on the CPU) and image scores of every image, in batches.

    The maps are allocated once at their final size and filled batch by batch, so a large test set is held in
    memory once. batch_size 0 picks the largest batch that fits: it starts high and halves on an out-of-memory
    error.
    """
    batch_size = batch_size or (1024 if device.type == "cuda" else 128)
    maps = {name: torch.empty(images_u8.shape, dtype=torch.float32) for name in (*SCORES, "x_hat")}
    start = 0
    while start < len(images_u8):
        try:
            x = to_model_input(images_u8[start:start + batch_size].to(device))
            for name, value in score_maps(learners, x).items():
                maps[name][start:start + len(x)] = value
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2  # and the same batch again, smaller
            torch.cuda.empty_cache()
            continue
        start += len(x)
    return maps, image_scores(maps)
