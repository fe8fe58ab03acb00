"""The shape of a learner's feature space: a junior that games linear CKA piles its variance into one direction,
so its effective rank falls towards 1 and its top share rises towards 1. Watched while training on a fixed probe
of training images (D2UE trains on every normal image, so the probe is a slice of the training set, not held out).
"""
import math

import torch

from utils import seeding

PROBE_SIZE = 256  # training images on which each learner's feature shape and BatchNorm health are watched
PROBE_SHARE = 0.02  # at most about this share of training time goes to the probe


def probe_of(images, seed, size=PROBE_SIZE):
    order = torch.randperm(len(images), generator=seeding.generator(seed, 0, "probe"))[:size]
    return images[order.sort().values.to(images.device)]


def probe_every(n_train, probe_size=PROBE_SIZE) -> int:
    """Epochs between two looks at the probe: a forward pass of the probe costs about a third of training on as
    many images, so on small training sets it is looked at every few epochs (always at the first and the last)."""
    return max(1, math.ceil(probe_size / (3 * n_train * PROBE_SHARE)))


def looks_at_probe(epoch, num_epoch, every) -> bool:
    """epoch counts from 1."""
    return epoch == 1 or epoch == num_epoch or epoch % every == 0


@torch.no_grad()
def on_probe(learner, probe) -> dict:
    """Effective rank and top-direction share of the learner's tapped features on the probe, in eval mode (the
    mode the scores use): a junior that piles its variance into one direction shows here."""
    was_training = learner.training
    learner.eval()
    rank, share = spectrum(learner(probe)["features"])
    learner.train(was_training)
    return {"effective_rank": rank.item(), "top_share": share.item()}


def _covariance_eigenvalues(features: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the centred features' scatter matrix (from the smaller of X^T X and X X^T, which share them).
    torch.linalg.eigvalsh waits for the GPU on CUDA (it checks a solver flag), so call the diagnostics once per
    epoch outside the captured training step."""
    x = features.flatten(1)
    x = x - x.mean(dim=0, keepdim=True)
    scatter = x.t() @ x if x.shape[1] <= x.shape[0] else x @ x.t()
    return torch.linalg.eigvalsh(scatter).clamp_min(0)


def spectrum(features: torch.Tensor) -> tuple:
    """(effective rank, top share) from one eigendecomposition: exp of the Shannon entropy of the normalised
    eigenvalues of the feature covariance (Roy & Vetterli 2007; p for isotropic features, 1 for rank 1), and the
    share of the variance in the top principal direction."""
    eigenvalues = _covariance_eigenvalues(features)
    shares = eigenvalues / eigenvalues.sum().clamp_min(torch.finfo(eigenvalues.dtype).tiny)
    entropy = -torch.special.xlogy(shares, shares).sum()
    return entropy.exp(), shares[-1]  # eigvalsh sorts ascending
