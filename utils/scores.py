"""Dual-Space Uncertainty (DSU) and the two baseline scores, as pixel maps; an image's score is its map's mean.

rec: (x - mean_k x_hat_k)^2 / v                         (ensemble reconstruction error)
unc: sqrt(var_k(x_hat_k) / v)                           (output-space disagreement)
dsu: std_k(|x_hat_k - x| * d mean(error_k) / dx) / sqrt(v)   (input-space disagreement)
v is the mean over learners of each learner's predicted pixel variance (1 for AE and MemAE, exp(log_var) for
AE-U); error_k is the backbone's score_error. std and var are unbiased over the K learners.
"""
import torch

SCORES = ("rec", "unc", "dsu")


def score_maps(learners, x: torch.Tensor) -> dict:
    """Pixel maps of rec, unc and dsu (each B x 1 x S x S) and the ensemble reconstruction, for one batch.

    One forward and one backward per learner. Learners must be in eval mode, so samples are independent and the
    gradient of the sum over the batch of each image's mean error is, for every image, its own gradient.
    """
    reconstructions, variances, input_terms = [], [], []
    for learner in learners:
        x_in = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = learner(x_in)
            gradient = input_gradient(learner, out, x_in)
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
