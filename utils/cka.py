"""Redundancy-Aware Repulsion (RAR): linear CKA between a junior learner's features and its frozen seniors'.

Linear CKA is invariant to isotropic scaling and orthogonal transforms of either feature space, so a junior cannot
look "different" from a senior by merely rotating or rescaling the same features.
"""
import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA of x (n x p) and y (n x q), rows = samples: HSIC(x, y) / sqrt(HSIC(x, x) HSIC(y, y)).

    With centred columns, HSIC(x, y) = ||yc^T xc||_F^2 = sum((xc xc^T) * (yc yc^T)); the first form is cheaper when
    the feature widths are below the batch size, the second when they are above it. Same value either way.
    """
    x = x.flatten(1)
    y = y.flatten(1)
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    n = x.shape[0]
    if max(x.shape[1], y.shape[1]) < n:
        cross = (y.t() @ x).pow(2).sum()
        norm = torch.linalg.matrix_norm(x.t() @ x) * torch.linalg.matrix_norm(y.t() @ y)
    else:
        gram_x = x @ x.t()
        gram_y = y @ y.t()
        cross = (gram_x * gram_y).sum()
        norm = (gram_x.pow(2).sum() * gram_y.pow(2).sum()).sqrt()
    return cross / norm.clamp_min(1e-8)


def repulsion(junior: torch.Tensor, seniors: list) -> tuple:
    """RAR term of one junior: the mean CKA against each senior's (detached) features, and the per-senior values."""
    per_senior = torch.stack([linear_cka(junior, senior) for senior in seniors])
    return per_senior.mean(), per_senior
