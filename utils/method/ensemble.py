"""A frozen ensemble over a whole image set, in batches: the three scores' maps and the learners' tapped features
or input gradients. Shared by train.py (the seniors), eval.py, predict.py, the reference and the figures."""
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
