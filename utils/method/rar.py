"""Redundancy-Aware Repulsion (RAR): a junior learner's loss gains Lambda x its mean linear CKA with its frozen
seniors' tapped features on the same batch (Solver.Lambda; Model.layer picks the tap).

Linear CKA is invariant to isotropic scaling and orthogonal transforms of either feature space, so a junior cannot
look "different" from a senior by merely rotating or rescaling the same features. It can by piling its variance
into one direction the senior lacks, which is what the published setting does (studies/rar: the juniors' effective
rank falls to about 1); the other similarities tried there are at commit 81a2410.

Everything here uses tensor operations only (no host sync, no branching on values), so the repulsion runs inside a
captured CUDA graph (utils/run/cuda_graph.py).
"""
import torch

CONSTANT_BELOW = 64  # centred features below this many float eps of their raw size are a constant's rounding residue


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA of x (n x p) and y (n x q), rows = samples (wider tensors are flattened per sample):
    HSIC(x, y) / sqrt(HSIC(x, x) HSIC(y, y)), a 0-dim tensor differentiable with respect to both.

    With centred columns, HSIC(x, y) = ||yc^T xc||_F^2 = sum((xc xc^T) * (yc yc^T)); the first form is cheaper when
    the feature widths are below the batch size, the second when they are above it. Same value either way.
    """
    x, y = _centred(x), _centred(y)
    n = x.shape[0]
    if max(x.shape[1], y.shape[1]) < n:
        cross = (y.t() @ x).pow(2).sum()
        self_x, self_y = (x.t() @ x).pow(2).sum(), (y.t() @ y).pow(2).sum()
    else:
        gram_x, gram_y = x @ x.t(), y @ y.t()
        cross = (gram_x * gram_y).sum()
        self_x, self_y = gram_x.pow(2).sum(), gram_y.pow(2).sum()
    return cross / (_safe_sqrt(self_x) * _safe_sqrt(self_y))


def _safe_sqrt(value: torch.Tensor, floor: float = 1e-12) -> torch.Tensor:
    """sqrt with the floor applied first: a clamp after the sqrt would still send sqrt's infinite slope at 0
    back as NaN gradients (constant or all-zero features)."""
    return value.clamp_min(floor).sqrt()


def _centred(x: torch.Tensor) -> torch.Tensor:
    """Flattened, centred columns, scaled to unit RMS (CKA is invariant to both; unit scale keeps the small floors
    far below any real value in float32).

    A feature map that is constant over the batch has no variance to compare, only the rounding residue of its
    centring (at most about 4 float eps of its size), which the scaling would blow up to unit noise: below
    CONSTANT_BELOW eps of the features' size it is set to exactly 0, and its CKA with anything is 0, with zero
    gradients.
    """
    raw = x.flatten(1)
    x = raw - raw.mean(dim=0, keepdim=True)
    varies = x.detach().abs().amax() > CONSTANT_BELOW * torch.finfo(x.dtype).eps * raw.detach().abs().amax()
    power = x.pow(2).mean()
    return x * torch.rsqrt(torch.where(varies, power, torch.ones_like(power))) * varies


def repulsion(junior: torch.Tensor, seniors: list) -> tuple:
    """The RAR term of one junior: its mean linear CKA against each senior's (detached) features of the same images,
    and the per-senior values."""
    per_senior = torch.stack([linear_cka(junior, senior) for senior in seniors])
    return per_senior.mean(), per_senior


@torch.no_grad()
def features_of(learner, images, batch_size=256):
    """A frozen learner's tapped features for a whole image tensor (exact: eval mode, no augmentation), as train.py
    caches its seniors' and eval.py compares the learners'."""
    return torch.cat([learner(images[i:i + batch_size])["features"] for i in range(0, len(images), batch_size)])


@torch.no_grad()
def pairwise_cka(features: list) -> torch.Tensor:
    """K x K linear CKA between every two learners' features of the same images (diagonal computed, 1)."""
    count = len(features)
    matrix = torch.empty(count, count, dtype=features[0].dtype, device=features[0].device)
    for i in range(count):
        for j in range(i, count):
            matrix[i, j] = matrix[j, i] = linear_cka(features[i], features[j])
    return matrix
