"""Redundancy-Aware Repulsion (RAR): the similarity between a junior learner's features and its frozen seniors'.

Linear CKA (the published choice) is invariant to isotropic scaling and orthogonal transforms of either feature
space, so a junior cannot look "different" from a senior by merely rotating or rescaling the same features. It can,
however, look different by moving almost all of its variance into one direction the senior lacks. Against that:
- cca is invariant (up to the ridge) to every invertible linear map, so variance piled into one direction no longer
  hides the directions a junior shares with a senior. It does not stop collapse: on a batch it has a floor of about
  max(p, q) / (n - 1) for unrelated features, which a collapsed junior escapes.
- debiased_cca has the same invariance and no floor, so collapsing buys nothing: of the options here, the only one
  that neither hidden shared directions nor collapse can lower.
- debiased_cka and rbf_cka are no better than linear CKA against variance in one direction.
tests/test_cka.py checks each of these properties.

Every similarity takes x (n x p) and y (n x q), rows = samples (wider tensors are flattened per sample), returns a
0-dim tensor that is differentiable with respect to both, and uses tensor operations only: no host sync and no
branching on values, so it runs inside a captured CUDA graph (utils/run/fast.py).
"""
import torch

CCA_RIDGE = 1e-4  # ridge of the whitened similarities, relative to the mean eigenvalue of the covariance
CONSTANT_BELOW = 64  # centred features below this many float eps of their raw size are a constant's rounding residue


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA of x (n x p) and y (n x q), rows = samples: HSIC(x, y) / sqrt(HSIC(x, x) HSIC(y, y)).

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
    """Flattened, centred columns, scaled to unit RMS (every similarity here is invariant to both; unit scale keeps
    the small floors far below any real value in float32).

    A feature map that is constant over the batch has no variance to compare, only the rounding residue of its
    centring (at most about 4 float eps of its size), which the scaling would blow up to unit noise: below
    CONSTANT_BELOW eps of the features' size it is set to exactly 0, and every similarity of it is 0, with zero
    gradients. Tensor operations only: no host sync.
    """
    raw = x.flatten(1)
    x = raw - raw.mean(dim=0, keepdim=True)
    varies = x.detach().abs().amax() > CONSTANT_BELOW * torch.finfo(x.dtype).eps * raw.detach().abs().amax()
    power = x.pow(2).mean()
    return x * torch.rsqrt(torch.where(varies, power, torch.ones_like(power))) * varies


def _whiten(x: torch.Tensor, ridge: float) -> torch.Tensor:
    """Centred features times the inverse Cholesky factor of their covariance plus a ridge: w^T w / n ~ identity.

    The ridge is relative to the mean eigenvalue (trace / p), so the result does not depend on the features' scale
    (an absolute ridge would let a junior lower its similarity just by shrinking its features) and the matrix stays
    safely positive definite in float32: its condition number is at most p / ridge + 1 (1.6e5 for p = 16), its
    inverse far above float32's rounding (6e-8), so the Cholesky factor always exists. The price: a
    direction holding a share s of the variance is damped by about s p / (s p + ridge), e.g. 1% at s = 0.01/15,
    p = 16 (a junior with 99% of its variance in one direction); only a direction below ~ridge/p of the variance
    is hidden from the similarity, and the effective rank diagnostic shows that.
    """
    x = _centred(x)
    n, p = x.shape
    if p >= n - 1:  # shapes are fixed when a graph is captured: this is no data-dependent branch
        raise ValueError(f"whitened similarities need fewer feature dimensions ({p}) than samples - 1 ({n - 1}): "
                         "from there on every canonical correlation is 1 whatever the features")
    cov = x.t() @ x / n
    mean_eigenvalue = cov.diagonal().mean()  # 1 for unit-RMS features, 0 for constant ones (the ridge then is 1)
    shift = ridge * torch.where(mean_eigenvalue > 0, mean_eigenvalue, torch.ones_like(mean_eigenvalue))
    factor, _ = torch.linalg.cholesky_ex(cov + shift * torch.eye(p, dtype=x.dtype, device=x.device))  # _ex: no sync
    return torch.linalg.solve_triangular(factor, x.t(), upper=False).t()


def cca(x: torch.Tensor, y: torch.Tensor, ridge: float = CCA_RIDGE) -> torch.Tensor:
    """Mean squared canonical correlation: trace(Cxx^-1 Cxy Cyy^-1 Cyx) / min(p, q), with ridge-regularised Cxx, Cyy.

    Linear CKA of whitened features up to normalisation, so invariant (up to the ridge) to every invertible linear
    map of either side: concentrating variance in one direction no longer lowers it. Computed as ||wx^T wy||_F^2 / n^2
    with wx, wy the whitened features (Cholesky and triangular solves, no explicit inverse). Needs p, q < n - 1.
    Unrelated features are not near 0 on a small batch: about max(p, q) / (n - 1), 0.25 for 16 dims and 64 samples.
    """
    x, y = _whiten(x, ridge), _whiten(y, ridge)
    n = x.shape[0]
    return (y.t() @ x).pow(2).sum() / (n * n * min(x.shape[1], y.shape[1]))


def _unbiased_hsic(gram_x: torch.Tensor, gram_y: torch.Tensor) -> torch.Tensor:
    """The unbiased HSIC estimator of Song et al. (2012), from two n x n Gram matrices (n >= 4)."""
    n = gram_x.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples, got {n}")
    keep = 1 - torch.eye(n, dtype=gram_x.dtype, device=gram_x.device)  # zero diagonals
    k, l = gram_x * keep, gram_y * keep
    row_k, row_l = k.sum(dim=1), l.sum(dim=1)
    return ((k * l).sum() + row_k.sum() * row_l.sum() / ((n - 1) * (n - 2))
            - 2 * (row_k @ row_l) / (n - 2)) / (n * (n - 3))


def _debiased_cka_of_grams(gram_x, gram_y):
    xy, xx, yy = _unbiased_hsic(gram_x, gram_y), _unbiased_hsic(gram_x, gram_x), _unbiased_hsic(gram_y, gram_y)
    # The unbiased estimates of HSIC(x, x) can dip below 0 on degenerate batches; clamping keeps the value finite.
    return xy / _safe_sqrt(xx.clamp_min(0) * yy.clamp_min(0), 1e-16)


def debiased_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA with the unbiased HSIC estimator: near 0 (and possibly slightly negative) for unrelated features
    even on a small batch, where the plain estimator gives about 0.2 for 16 dims and 64 samples. Exactly 1 for
    identical inputs. Same invariances as linear CKA (orthogonal maps, isotropic scaling)."""
    x, y = _centred(x), _centred(y)
    return _debiased_cka_of_grams(x @ x.t(), y @ y.t())


def debiased_cca(x: torch.Tensor, y: torch.Tensor, ridge: float = CCA_RIDGE) -> torch.Tensor:
    """Debiased CKA of the ridge-whitened features: the squared canonical correlations without their small-batch
    floor. Our addition beside the issue's list: on a batch of 64 with 16 dims, `cca` gives 0.25 +- 0.02 for
    unrelated features and `debiased_cka` can still be gamed by piling variance into one direction; this one is
    both invariant (up to the ridge) to every invertible linear map and 0.00 +- 0.02 for unrelated features, so its
    value reads like a correlation at any batch size. Exactly 1 for identical inputs. Normalised like CKA: sum of
    squared canonical correlations / sqrt(p q), so below 1 when p != q even for related features.
    """
    x, y = _whiten(x, ridge), _whiten(y, ridge)
    return _debiased_cka_of_grams(x @ x.t(), y @ y.t())


def _rbf_gram(x: torch.Tensor) -> torch.Tensor:
    """exp(-d^2 / (2 sigma^2)) with sigma the median distance between two different samples of the batch.

    The bandwidth is detached (a junior should not lower its similarity by moving the bandwidth) and is the lower
    median (torch.median), computed on the device. Squared distances from the expansion on centred features.
    """
    sq = x.pow(2).sum(dim=1)
    dist2 = (sq[:, None] + sq[None, :] - 2 * x @ x.t()).clamp_min(0)
    n = x.shape[0]
    upper = torch.triu_indices(n, n, 1, device=x.device)
    median = dist2.detach()[upper[0], upper[1]].median()
    bandwidth2 = torch.where(median > 0, median, torch.ones_like(median))  # all samples equal: any bandwidth
    return torch.exp(-dist2 / (2 * bandwidth2))


def _centre_gram(gram: torch.Tensor) -> torch.Tensor:
    """H K H with H = I - 11^T / n."""
    return gram - gram.mean(dim=0, keepdim=True) - gram.mean(dim=1, keepdim=True) + gram.mean()


def rbf_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CKA with Gaussian (RBF) kernels, median-distance bandwidth, one per input: sees non-linear relations too.
    Invariant to orthogonal maps, isotropic scaling and translation (the bandwidth scales with the distances)."""
    gram_x, gram_y = _centre_gram(_rbf_gram(_centred(x))), _centre_gram(_rbf_gram(_centred(y)))
    return (gram_x * gram_y).sum() / (_safe_sqrt(gram_x.pow(2).sum()) * _safe_sqrt(gram_y.pow(2).sum()))


def gradient_cosine(junior: torch.Tensor, senior: torch.Tensor) -> torch.Tensor:
    """Mean over the samples of the squared cosine between two learners' input gradients of their reconstruction
    error, the space DSU scores in (LIT, Ross et al. 2020): 1 when both move every image's error the same way (or
    exactly opposite), 0 when orthogonal. Rows = samples, same shape on both sides."""
    junior, senior = junior.flatten(1), senior.flatten(1)
    cosine = (junior * senior).sum(dim=1) / (_safe_sqrt(junior.pow(2).sum(dim=1), 1e-30)
                                            * _safe_sqrt(senior.pow(2).sum(dim=1), 1e-30))
    return cosine.pow(2).mean()


# Similarities of tapped features; Model.repulsion picks one of these or of GRADIENT_SIMILARITIES.
SIMILARITIES = {"linear_cka": linear_cka, "cca": cca, "debiased_cka": debiased_cka, "rbf_cka": rbf_cka,
                "debiased_cca": debiased_cca}
GRADIENT_SIMILARITIES = {"gradient_cosine": gradient_cosine}  # compare input gradients, not features
REPULSIONS = {**SIMILARITIES, **GRADIENT_SIMILARITIES}
WHITENED = ("cca", "debiased_cca")  # need fewer feature dimensions than a batch has samples, minus one


def repulsion(junior: torch.Tensor, seniors: list, kind: str = "linear_cka") -> tuple:
    """RAR term of one junior: the mean similarity against each senior's (detached) features, or input gradients
    for a kind of GRADIENT_SIMILARITIES, and the per-senior values. `kind` names an entry of REPULSIONS."""
    if kind not in REPULSIONS:
        raise ValueError(f"unknown repulsion '{kind}'; valid: {', '.join(REPULSIONS)}")
    similarity = REPULSIONS[kind]
    per_senior = torch.stack([similarity(junior, senior) for senior in seniors])
    return per_senior.mean(), per_senior


@torch.no_grad()
def pairwise_similarity(features: list, kind: str = "linear_cka") -> torch.Tensor:
    """K x K matrix of the similarity between every two learners' features of the same images (diagonal included,
    computed rather than set: 1 for the CKA family, just under 1 for the whitened ones)."""
    similarity = SIMILARITIES[kind]
    count = len(features)
    matrix = torch.empty(count, count, dtype=features[0].dtype, device=features[0].device)
    for i in range(count):
        for j in range(i, count):
            matrix[i, j] = matrix[j, i] = similarity(features[i], features[j])  # all of them are symmetric
    return matrix
