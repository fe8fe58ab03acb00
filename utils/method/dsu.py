"""Dual-Space Uncertainty (DSU) and the two baseline scores, as pixel maps; an image's score is its map's mean.

rec: (x - mean_k x_hat_k)^2 / v                              (ensemble reconstruction error)
unc: sqrt(var_k(x_hat_k) / v)                                (output-space disagreement)
dsu: std_k(|x_hat_k - x| * d mean(error_k) / dx) / sqrt(v)   (input-space disagreement)
v is the mean over learners of each learner's predicted pixel variance (1 for AE and MemAE, exp(log_var) for
AE-U); error_k is the backbone's score_error. std and var are unbiased over the K learners.

Learner k never depends on how many learners follow it, so the first k learners of a run are a k-learner run: the
maps of every ensemble size come from the same forward and backward passes (score_dataset's curve).
"""
from dataclasses import dataclass, field

import torch

from models import to_model_input

SCORES = ("rec", "unc", "dsu")


def input_gradient(learner, out, x):
    """d(each image's mean score_error)/dx for the learner's output `out` on x (which must require grad). In eval
    mode the images are independent, so the gradient of the batch's sum is every image's own."""
    error = learner.score_error(out, x).flatten(1).mean(dim=1).sum()
    return torch.autograd.grad(error, x)[0]


def learner_terms(learners, x: torch.Tensor, features: list | None = None) -> dict:
    """What each learner contributes to the maps of the batch x, as lists in learner order: its reconstruction
    "x_hat", its pixel variance and its input-space term |x_hat - x| * input gradient.

    One forward and one backward per learner. Learners must be in eval mode (see input_gradient). `features`, when
    given, receives each learner's tapped features of the batch from the same forward.
    """
    terms = {"x_hat": [], "variance": [], "input_term": []}
    for learner in learners:
        x_in = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = learner(x_in)
            gradient = input_gradient(learner, out, x_in)
        if features is not None:
            features.append(out["features"].detach())
        x_hat = out["x_hat"].detach()
        terms["x_hat"].append(x_hat)
        terms["variance"].append(learner.pixel_variance(out).detach())
        terms["input_term"].append((x_hat - x).abs() * gradient)
    return terms


def maps_of(x: torch.Tensor, terms: dict, count: int | None = None) -> dict:
    """Pixel maps of rec, unc and dsu (each B x 1 x S x S) and the ensemble reconstruction of the first `count`
    learners' terms (learner_terms; default all)."""
    reconstructions = terms["x_hat"][:count]
    variance = mean_over_learners(terms["variance"][:count])
    ensemble = mean_over_learners(reconstructions)
    return {
        "rec": (x - ensemble).pow(2) / variance,
        "unc": (variance_over_learners(reconstructions, ensemble) / variance).sqrt(),
        "dsu": variance_over_learners(terms["input_term"][:count]).sqrt() / variance.sqrt(),
        "x_hat": ensemble,
    }


def score_maps(learners, x: torch.Tensor, features: list | None = None) -> dict:
    """The maps of the whole ensemble on one batch (learner_terms, then maps_of)."""
    return maps_of(x, learner_terms(learners, x, features))


# Written out over the list of learners: torch.var/std over a short leading dimension are several times slower on
# the CPU than these element-wise operations.
def mean_over_learners(values: list) -> torch.Tensor:
    return sum(values) / len(values)


def variance_over_learners(values: list, mean=None) -> torch.Tensor:
    """Unbiased variance across learners, per pixel (pass their mean when it is already at hand)."""
    mean = mean_over_learners(values) if mean is None else mean
    return sum((value - mean).pow(2) for value in values) / (len(values) - 1)


def image_scores(maps: dict) -> dict:
    """Image-level scores: the mean of each pixel map."""
    return {name: maps[name].flatten(1).mean(dim=1) for name in SCORES}


@dataclass
class Scored:
    """An ensemble's scoring of an image set. maps: rec, unc, dsu and x_hat of all K learners, float32 (N, 1, S, S)
    on the CPU; features: each learner's tapped features of every image; curve: {k: image scores of the first k
    learners} for k = 2..K-1 (K's are the means of `maps`); curve_maps: {k: their maps} for k = 2..K-1 (pixel
    metrics per ensemble size). What score_dataset was not asked for is None or {}."""
    maps: dict
    features: list | None = None
    curve: dict = field(default_factory=dict)
    curve_maps: dict = field(default_factory=dict)


def score_dataset(learners, images_u8, batch_size, device, features=False, curve=False, curve_maps=False) -> Scored:
    """Score every image in batches (Scored): the maps, and when asked the learners' features, the curve's image
    scores and (curve_maps, which implies curve) its maps, for every ensemble size below K. The maps are allocated once at their final size and filled
    batch by batch, so a large set is held in memory once (plus once per ensemble size below K with curve_maps).
    batch_size 0 picks the largest batch that fits: it starts high and halves on an out-of-memory error."""
    batch_size = batch_size or (1024 if device.type == "cuda" else 128)
    count = len(learners)
    sizes = range(2, count) if curve or curve_maps else range(0)  # the smaller ensembles; K's are the maps

    def empty():
        return torch.empty(images_u8.shape, dtype=torch.float32)

    maps = {name: empty() for name in (*SCORES, "x_hat")}
    smaller = {k: {name: empty() for name in SCORES} for k in sizes} if curve_maps else {}
    by_size = {k: {name: torch.empty(len(images_u8)) for name in SCORES} for k in sizes}
    batches = []  # per batch, each learner's features
    start = 0
    while start < len(images_u8):
        batch_features = [] if features else None
        try:
            x = to_model_input(images_u8[start:start + batch_size].to(device))
            terms = learner_terms(learners, x, batch_features)
            rows = slice(start, start + len(x))
            for name, value in maps_of(x, terms).items():
                maps[name][rows] = value
            for k in sizes:
                maps_k = maps_of(x, terms, k)
                for name, value in image_scores(maps_k).items():
                    by_size[k][name][rows] = value
                for name in smaller.get(k, ()):
                    smaller[k][name][rows] = maps_k[name]
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2  # and the same batch again, smaller
            torch.cuda.empty_cache()
            continue
        if features:
            batches.append(batch_features)
        start += len(x)
    return Scored(maps, [torch.cat(parts) for parts in zip(*batches)] if features else None, by_size, smaller)
