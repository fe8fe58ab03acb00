"""A frozen ensemble over a whole image set, in batches: the three scores' maps (and with them the learners' tapped
features), or one learner's features or input gradients. Shared by train.py (the seniors), eval.py, predict.py,
the reference and the figures."""
import torch

from models import to_model_input
from utils.method.scores import SCORES, image_scores, input_gradient, score_maps


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


def score_dataset(learners, images_u8, batch_size, device, features=False):
    """Pixel maps (float32, on the CPU) and image scores of every image, in batches; with features=True also
    every learner's tapped features of every image (a list, one tensor per learner) from the same forward passes.

    The maps are allocated once at their final size and filled batch by batch, so a large test set is held in
    memory once. batch_size 0 picks the largest batch that fits: it starts high and halves on an out-of-memory
    error.
    """
    batch_size = batch_size or (1024 if device.type == "cuda" else 128)
    maps = {name: torch.empty(images_u8.shape, dtype=torch.float32) for name in (*SCORES, "x_hat")}
    batches = []  # per batch, each learner's features
    start = 0
    while start < len(images_u8):
        batch_features = [] if features else None
        try:
            x = to_model_input(images_u8[start:start + batch_size].to(device))
            for name, value in score_maps(learners, x, batch_features).items():
                maps[name][start:start + len(x)] = value
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2  # and the same batch again, smaller
            torch.cuda.empty_cache()
            continue
        if features:
            batches.append(batch_features)
        start += len(x)
    if features:
        return maps, image_scores(maps), [torch.cat(parts) for parts in zip(*batches)]
    return maps, image_scores(maps)
