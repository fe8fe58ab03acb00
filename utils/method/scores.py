"""Dual-Space Uncertainty (DSU) and the two baseline scores, as pixel maps; an image's score is its map's mean.

rec: (x - mean_k x_hat_k)^2 / v                         (ensemble reconstruction error)
unc: sqrt(var_k(x_hat_k) / v)                           (output-space disagreement)
dsu: std_k(|x_hat_k - x| * d mean(error_k) / dx) / sqrt(v)   (input-space disagreement)
v is the mean over learners of each learner's predicted pixel variance (1 for AE and MemAE, exp(log_var) for
AE-U); error_k is the backbone's score_error. std and var are unbiased over the K learners.

Beside the published three, every map referred to normal images (a run's reference, utils/method/reference.py):
<s>_z:       mean over pixels of z = (t(map) - center) / max(spread, floor), per pixel, center and spread the mean
             and standard deviation of t(map) over the reference's fit half; t = log(map + eps) or the map itself
             (Form), floor a quantile of the reference's per-pixel spreads
<s>_top1:    mean of the top 1% pixels of the raw map smoothed by a 3 x 3 box (small lesions)
<s>_z_top1:  the same of z
fused:       mean over rec, unc and dsu of (log score - mean) / sd, mean and sd over the reference's fit half
"""
from dataclasses import dataclass

import torch
from torch.nn import functional as F

SCORES = ("rec", "unc", "dsu")
REFERRED = tuple(f"{name}_z" for name in SCORES)  # the maps referred to normal images
MAPS = (*SCORES, *REFERRED)  # every pixel map eval.py scores against masks
POOLED = ("top1",)  # poolings beside the mean, by suffix
IMAGE_SCORES = (*SCORES, *(f"{name}_{pool}" for pool in POOLED for name in SCORES), *REFERRED,
                *(f"{name}_{pool}" for pool in POOLED for name in REFERRED), "fused")
TOP_SHARE = 0.01  # top1: the share of pixels averaged
SMOOTH = 3  # top1: side of the box filter applied first, so that one noisy pixel does not make a lesion


def score_maps(learners, x: torch.Tensor, features: list | None = None) -> dict:
    """Pixel maps of rec, unc and dsu (each B x 1 x S x S) and the ensemble reconstruction, for one batch.

    One forward and one backward per learner. Learners must be in eval mode, so samples are independent and the
    gradient of the sum over the batch of each image's mean error is, for every image, its own gradient.
    `features`, when given, receives each learner's tapped features of the batch from the same forward.
    """
    reconstructions, variances, input_terms = [], [], []
    for learner in learners:
        x_in = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = learner(x_in)
            gradient = input_gradient(learner, out, x_in)
        if features is not None:
            features.append(out["features"].detach())
        x_hat = out["x_hat"].detach()
        reconstructions.append(x_hat)
        variances.append(learner.pixel_variance(out).detach())
        input_terms.append((x_hat - x).abs() * gradient)
    variance = mean_over_learners(variances)
    ensemble = mean_over_learners(reconstructions)
    return {
        "rec": (x - ensemble).pow(2) / variance,
        "unc": (variance_over_learners(reconstructions, ensemble) / variance).sqrt(),
        "dsu": variance_over_learners(input_terms).sqrt() / variance.sqrt(),
        "x_hat": ensemble,
    }


def input_gradient(learner, out, x, create_graph=False):
    """d(each image's mean score_error)/dx for the learner's output `out` on x (which must require grad). In eval
    mode the images are independent, so the gradient of the batch's sum is every image's own."""
    error = learner.score_error(out, x).flatten(1).mean(dim=1).sum()
    return torch.autograd.grad(error, x, create_graph=create_graph)[0]


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


@dataclass(frozen=True)
class Form:
    """How a map is referred to normal images: on a log scale or not, and the floor of the per-pixel spread as a
    quantile of the reference's per-pixel spreads (0: no floor)."""
    log: bool = False
    floor: float = 0.5

    @property
    def name(self) -> str:
        return f"{'log' if self.log else 'linear'}, floor q{self.floor:g}"


FORM = Form()  # the form eval.py and predict.py use, chosen by the scoring study's rule (README)
LOG_EPS = 0.01  # log form: eps = this share of the reference's mean pixel value of the score


def reference_statistics(maps: dict, form: Form = FORM) -> dict:
    """Per score, what referring its map needs, from the maps of the reference's fit half (N x 1 x S x S, N >= 2):
    {"eps", "center", "spread"} (spread already floored)."""
    statistics = {}
    for name in SCORES:
        values = maps[name].double()
        eps = LOG_EPS * max(values.mean().item(), 1e-30) if form.log else 0.0
        values = (values + eps).log() if form.log else values
        spread = values.std(dim=0)
        floor = torch.quantile(spread.flatten(), form.floor).item() if form.floor else 0.0
        tiny = 1e-6 * max(spread.mean().item(), 1e-30)  # no floor still never divides by zero
        statistics[name] = {"eps": eps, "log": form.log, "center": values.mean(dim=0).float(),
                            "spread": spread.clamp_min(max(floor, tiny)).float()}
    return statistics


def referred_map(values: torch.Tensor, statistics: dict) -> torch.Tensor:
    """z: a score's map referred, pixel by pixel, to the normal reference (reference_statistics of that score)."""
    values = (values.double() + statistics["eps"]).log().float() if statistics["log"] else values
    return (values - statistics["center"]) / statistics["spread"]


def top_mean(maps: torch.Tensor, share=TOP_SHARE, side=SMOOTH) -> torch.Tensor:
    """Per image, the mean of the `share` highest pixels of the map smoothed by a side x side box."""
    pad = side // 2
    smooth = F.avg_pool2d(F.pad(maps, (pad, pad, pad, pad), mode="replicate"), side, stride=1)
    flat = smooth.flatten(1)
    return flat.topk(max(1, round(share * flat.shape[1])), dim=1).values.mean(dim=1)


def log_image_scores(scores: dict) -> dict:
    """log of each published image score (fused works on this scale; a score of 0 stays finite)."""
    return {name: scores[name].double().clamp_min(1e-30).log() for name in SCORES}


def image_statistics(scores: dict) -> dict:
    """{score: (mean, sd)} of the log published image scores of the reference's fit half, for fused."""
    return {name: (value.mean().item(), value.std().item()) for name, value in log_image_scores(scores).items()}


def referred_scores(maps: dict, statistics: dict, image_stats: dict) -> tuple[dict, dict]:
    """Every image score of IMAGE_SCORES and the referred maps (<s>_z), from the published maps of a batch or a
    whole set and a reference's statistics (reference_statistics, image_statistics)."""
    referred = {f"{name}_z": referred_map(maps[name], statistics[name]) for name in SCORES}
    scores = image_scores(maps)
    for name in SCORES:
        scores[f"{name}_top1"] = top_mean(maps[name])
    for name, values in referred.items():
        scores[name] = values.flatten(1).mean(dim=1)
        scores[f"{name}_top1"] = top_mean(values)
    logs = log_image_scores(scores)
    scores["fused"] = (sum((logs[name] - mean) / max(sd, 1e-12) for name, (mean, sd) in image_stats.items())
                       / len(SCORES)).float()
    return referred, {name: scores[name] for name in IMAGE_SCORES}
