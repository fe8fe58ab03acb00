"""Linear CKA against a direct NumPy transcription of the definition, and its invariances; then the other repulsion
options (each against a NumPy transcription, with its invariances and its counter-checks) and the
feature-spectrum diagnostics."""
import numpy as np
import pytest
import torch

from utils.method.cka import (CCA_RIDGE, SIMILARITIES, cca, debiased_cca, debiased_cka, gradient_cosine, linear_cka,
                              pairwise_similarity, rbf_cka, repulsion)
from utils.method.feature_shape import participation_ratio, spectrum


def cka_numpy(x, y):
    """HSIC(X, Y) = sum(HKH o HLH), K = X X^T, L = Y Y^T, H = I - 11^T / n (the definition D2UE uses), in float64."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(a, b):
        return np.sum((h @ (a @ a.T) @ h) * (h @ (b @ b.T) @ h))

    return hsic(x, y) / max(np.sqrt(hsic(x, x) * hsic(y, y)), 1e-8)


@pytest.mark.parametrize("p, q", [(5, 7), (16, 16), (100, 3), (80, 120)])  # both branches: widths below/above n
def test_matches_numpy(p, q):
    rng = np.random.default_rng(p * q)
    x = rng.normal(size=(32, p))
    y = x[:, :1] * rng.normal(size=(1, q)) + rng.normal(size=(32, q))  # partly related, so CKA is not ~0
    expected = cka_numpy(x, y)
    got = linear_cka(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)).item()
    assert got == pytest.approx(expected, rel=1e-9)
    assert 0.05 < expected < 0.95


def test_flattens_feature_maps():
    x = torch.randn(10, 2, 3, 3, dtype=torch.float64)
    y = torch.randn(10, 4, dtype=torch.float64)
    assert linear_cka(x, y).item() == pytest.approx(cka_numpy(x.flatten(1).numpy(), y.numpy()), rel=1e-9)


@pytest.mark.parametrize("p", [8, 64])
def test_self_similarity_is_one(p):
    x = torch.randn(32, p, dtype=torch.float64)
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("p", [8, 64])
def test_invariant_to_isotropic_scaling_and_rotation(p):
    generator = torch.Generator().manual_seed(p)
    x = torch.randn(32, p, dtype=torch.float64, generator=generator)
    other = torch.randn(32, 6, dtype=torch.float64, generator=generator) + x[:, :6]
    rotation, _ = torch.linalg.qr(torch.randn(p, p, dtype=torch.float64, generator=generator))
    transformed = 3.7 * x @ rotation
    assert linear_cka(transformed, other).item() == pytest.approx(linear_cka(x, other).item(), rel=1e-10)
    assert linear_cka(transformed, x).item() == pytest.approx(1.0, abs=1e-10)


def test_not_invariant_to_anisotropic_scaling():
    """The counter-check: stretching one axis does change CKA, so the invariance tests above can fail."""
    x = torch.randn(32, 4, dtype=torch.float64)
    stretched = x * torch.tensor([10.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert linear_cka(x, stretched).item() < 0.99


def test_bounded_between_zero_and_one():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(16, 5, generator=generator)
        y = torch.randn(16, 9, generator=generator)
        value = linear_cka(x, y).item()
        assert 0.0 <= value <= 1.0 + 1e-6


def test_repulsion_is_mean_over_seniors_and_differentiable():
    junior = torch.randn(20, 6, requires_grad=True)
    seniors = [torch.randn(20, 6), torch.randn(20, 3)]
    mean, per_senior = repulsion(junior, seniors)
    assert per_senior.shape == (2,)
    assert mean.item() == pytest.approx(float(np.mean([linear_cka(junior, s).item() for s in seniors])), rel=1e-6)
    mean.backward()
    assert junior.grad is not None and junior.grad.abs().sum() > 0


# ---- The other repulsion options ----------------------------------------------------------------------------------

KINDS = list(SIMILARITIES)
CKA_FAMILY = ["linear_cka", "debiased_cka", "rbf_cka"]  # invariant to orthogonal maps and isotropic scaling
WHITENED = ["cca", "debiased_cca"]  # invariant to every invertible linear map (exactly without the ridge)


def related(n=64, p=16, q=12, seed=0, dtype=torch.float64):
    """x (n x p) and y (n x q) that share a 4-dimensional signal plus independent noise, so similarities are far
    from both 0 and 1."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, dtype=dtype, generator=generator)
    y = x[:, :4] @ torch.randn(4, q, dtype=dtype, generator=generator) + torch.randn(n, q, dtype=dtype,
                                                                                      generator=generator)
    return x, y


def centred_covariance_eigenvalues(x):
    x = x - x.mean(axis=0)
    return np.linalg.eigvalsh(x.T @ x / len(x))


def hat_numpy(x, ridge):
    """x_c (C + r I)^-1 x_c^T / n with C the covariance and r = ridge * trace(C) / p: the whitened Gram matrix."""
    x = x - x.mean(axis=0)
    n, p = x.shape
    cov = x.T @ x / n
    return x @ np.linalg.inv(cov + ridge * np.trace(cov) / p * np.eye(p)) @ x.T / n


def cca_numpy(x, y, ridge):
    """trace(Cxx^-1 Cxy Cyy^-1 Cyx) / min(p, q) with ridge-regularised Cxx, Cyy, written with explicit inverses."""
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    n, p, q = len(x), x.shape[1], y.shape[1]
    cxx, cyy, cxy = x.T @ x / n, y.T @ y / n, x.T @ y / n
    cxx = cxx + ridge * np.trace(cxx) / p * np.eye(p)
    cyy = cyy + ridge * np.trace(cyy) / q * np.eye(q)
    return np.trace(np.linalg.inv(cxx) @ cxy @ np.linalg.inv(cyy) @ cxy.T) / min(p, q)


def ridge_bound(x, m, ridge=CCA_RIDGE):
    """How far the ridge can move cca from its ridge-free value through x's side: the whitened Gram matrix loses
    r / (lambda + r) < r / lambda in each eigendirection, so trace(P_x P_y) / m moves by less than
    sum(r / lambda) / m."""
    eigenvalues = centred_covariance_eigenvalues(x)
    return np.sum(ridge * eigenvalues.mean() / eigenvalues) / m


def unbiased_hsic_numpy(k, l):
    """Song et al. (2012), eq. (5): [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))."""
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))


def debiased_cka_of_grams_numpy(k, l):
    return unbiased_hsic_numpy(k, l) / np.sqrt(unbiased_hsic_numpy(k, k) * unbiased_hsic_numpy(l, l))


def rbf_cka_numpy(x, y):
    """CKA (biased HSIC, as linear CKA) of Gaussian Grams; sigma = lower median of the distances between two
    different samples (torch.median's convention), from explicit pairwise differences."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n

    def gram(a):
        dist2 = ((a[:, None, :] - a[None, :, :]) ** 2).sum(axis=-1)
        pairs = np.sort(dist2[np.triu_indices(n, 1)])
        sigma2 = pairs[(len(pairs) - 1) // 2]
        return h @ np.exp(-dist2 / (2 * sigma2)) @ h

    k, l = gram(x), gram(y)
    return np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l))


def test_default_repulsion_is_the_published_linear_cka_bit_for_bit():
    junior, senior = related(n=32, p=6, q=6, dtype=torch.float32)
    seniors = [senior, senior[:, :3] + 1]
    mean, per_senior = repulsion(junior, seniors)
    assert torch.equal(per_senior, torch.stack([linear_cka(junior, s) for s in seniors]))
    assert torch.equal(mean, per_senior.mean())
    assert torch.equal(repulsion(junior, seniors, "linear_cka")[0], mean)


def test_unknown_kind_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown repulsion 'ckaa'; valid: linear_cka, cca"):
        repulsion(torch.randn(8, 2), [torch.randn(8, 2)], "ckaa")


@pytest.mark.parametrize("kind", ["linear_cka", "debiased_cka", "rbf_cka", "debiased_cca"])
def test_identical_inputs_give_one(kind):
    x, _ = related()
    assert SIMILARITIES[kind](x, x).item() == pytest.approx(1.0, abs=1e-12)


def test_cca_of_identical_inputs_is_one_up_to_the_ridge():
    """cca(x, x) = mean over directions of (lambda / (lambda + r))^2 exactly, which is 1 without the ridge and at
    least 1 - 2 sum(r / lambda) / p with it (1 - (1 - t)^2 <= 2t); about 1 - 3e-4 here."""
    x, _ = related()
    eigenvalues = centred_covariance_eigenvalues(x.numpy())
    shrink = eigenvalues / (eigenvalues + CCA_RIDGE * eigenvalues.mean())
    value = cca(x, x).item()
    assert value == pytest.approx(np.mean(shrink ** 2), rel=1e-9)
    assert 1 - 2 * ridge_bound(x.numpy(), 16) <= value < 1
    assert cca(x, x, ridge=0.0).item() == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("ridge", [0.0, CCA_RIDGE, 0.1])
@pytest.mark.parametrize("p, q", [(16, 12), (5, 9)])
def test_cca_matches_numpy(ridge, p, q):
    x, y = related(p=p, q=q, seed=p)
    expected = cca_numpy(x.numpy(), y.numpy(), ridge)
    assert cca(x, y, ridge=ridge).item() == pytest.approx(expected, rel=1e-9)
    assert 0.05 < expected < 0.95


@pytest.mark.parametrize("ridge", [0.0, CCA_RIDGE])
def test_debiased_cca_matches_numpy(ridge):
    """Debiased CKA of the whitened Gram matrices; numpy whitens with an explicit inverse, torch with Cholesky."""
    x, y = related(seed=3)
    expected = debiased_cka_of_grams_numpy(hat_numpy(x.numpy(), ridge), hat_numpy(y.numpy(), ridge))
    assert debiased_cca(x, y, ridge=ridge).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("shift", [0.0, 5.0])
def test_debiased_cka_matches_numpy_unbiased_hsic(shift):
    """The estimator is a U-statistic and does not need centred features: numpy gets the raw (shifted) ones."""
    x, y = related(n=20, p=5, q=7, seed=4)
    expected = debiased_cka_of_grams_numpy(*(a @ a.T for a in (x.numpy() + shift, y.numpy())))
    assert debiased_cka(x + shift, y).item() == pytest.approx(expected, rel=1e-9)
    assert 0.05 < expected < 0.95


@pytest.mark.parametrize("p, q", [(16, 12), (70, 3)])
def test_rbf_cka_matches_numpy(p, q):
    x, y = related(n=40, p=p, q=q, seed=5)
    expected = rbf_cka_numpy(x.numpy(), y.numpy())
    assert rbf_cka(x, y).item() == pytest.approx(expected, rel=1e-9)
    assert 0.05 < expected < 0.95


@pytest.mark.parametrize("kind", KINDS)
def test_symmetric(kind):
    x, y = related(seed=6)
    assert SIMILARITIES[kind](x, y).item() == pytest.approx(SIMILARITIES[kind](y, x).item(), rel=1e-9)


@pytest.mark.parametrize("kind", CKA_FAMILY + WHITENED)
def test_invariant_to_rotation_isotropic_scaling_and_translation(kind):
    x, y = related(seed=7)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(7)))
    moved = 0.01 * x @ rotation + 3.0
    similarity = SIMILARITIES[kind]
    assert similarity(moved, y).item() == pytest.approx(similarity(x, y).item(), rel=1e-9)
    assert similarity(y, moved).item() == pytest.approx(similarity(y, x).item(), rel=1e-9)


def invertible_map(p, condition, seed):
    """rotation x diag(1 .. condition) x rotation: an invertible linear map with that condition number."""
    generator = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(p, p, dtype=torch.float64, generator=generator))
    right, _ = torch.linalg.qr(torch.randn(p, p, dtype=torch.float64, generator=generator))
    return left @ torch.diag(torch.linspace(1, condition, p, dtype=torch.float64)) @ right


@pytest.mark.parametrize("kind", WHITENED)
@pytest.mark.parametrize("side", ["junior", "senior"])
def test_whitened_invariant_to_any_invertible_linear_map(kind, side):
    """Exact without the ridge; with it, within the ridge's reach (ridge_bound) on both sides of both values."""
    x, y = related(seed=8)
    matrix = invertible_map(y.shape[1] if side == "senior" else x.shape[1], 4.0, seed=8)
    mapped = (x, y @ matrix) if side == "senior" else (x @ matrix, y)
    similarity = SIMILARITIES[kind]
    assert similarity(*mapped, ridge=0.0).item() == pytest.approx(similarity(x, y, ridge=0.0).item(), rel=1e-9)
    if kind == "cca":
        m = min(x.shape[1], y.shape[1])
        reach = sum(ridge_bound(a.numpy(), m) for a in (x, y, *mapped))
        assert abs(cca(*mapped).item() - cca(x, y).item()) <= reach
        assert reach < 0.01


def test_only_the_whitened_ones_ignore_anisotropic_scaling():
    """Stretching one feature (one that y does not share) by 10 leaves cca and debiased_cca as they were (up to the
    ridge) but moves every CKA."""
    x, y = related(seed=9)
    stretched = x * torch.tensor([1.0] * 15 + [10.0], dtype=torch.float64)
    for kind in WHITENED:
        assert SIMILARITIES[kind](stretched, y).item() == pytest.approx(SIMILARITIES[kind](x, y).item(), abs=1e-3)
    for kind in CKA_FAMILY:
        assert abs(SIMILARITIES[kind](stretched, y).item() - SIMILARITIES[kind](x, y).item()) > 0.05


def test_variance_in_one_direction_fools_linear_cka_but_not_cca():
    """The cheat linear CKA allows, built exactly. Seventeen centred, mutually uncorrelated unit-variance columns
    u0..u16 (QR of a random 64 x 17 matrix). Senior = [2 u0, u1, ..., u15]: its top direction is u0. Junior =
    [a u16, u1, ..., u15]: the senior's 15 other directions exactly, and instead of u0 a direction u16 uncorrelated
    with every senior column. Honest junior: a = 1. Cheating junior: a^2 = 99 * 15, so u16 holds 99% of its variance.
    Linear CKA = 15 / (sqrt(31) sqrt(a^4 + 15)): 0.67 honest, 0.0018 cheating. cca = 15/16 for both, less the ridge,
    which damps each shared direction (1% of the variance over 15 directions) by about 1%."""
    n, p = 64, 16
    raw = torch.randn(n, p + 1, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    columns = torch.linalg.qr(raw - raw.mean(dim=0))[0] * n ** 0.5
    senior = torch.cat([2 * columns[:, :1], columns[:, 1:p]], dim=1)
    honest = torch.cat([columns[:, p:], columns[:, 1:p]], dim=1)
    cheat = torch.cat([(99.0 * 15) ** 0.5 * columns[:, p:], columns[:, 1:p]], dim=1)
    assert top_share_of(cheat) == pytest.approx(0.99, abs=1e-9)
    assert linear_cka(honest, senior).item() == pytest.approx(15 / (31 ** 0.5 * 4), rel=1e-9)
    assert linear_cka(cheat, senior).item() == pytest.approx(15 / (31 ** 0.5 * (1485 ** 2 + 15) ** 0.5), rel=1e-9)
    assert linear_cka(cheat, senior).item() < 0.01
    assert cca(honest, senior).item() == pytest.approx(15 / 16, rel=1e-3)
    assert 0.98 * cca(honest, senior).item() < cca(cheat, senior).item() < cca(honest, senior).item()
    assert cca(cheat, senior, ridge=0.0).item() == pytest.approx(15 / 16, rel=1e-9)
    assert debiased_cca(cheat, senior).item() > 0.98 * debiased_cca(honest, senior).item()
    assert rbf_cka(cheat, senior).item() < 0.2 and debiased_cka(cheat, senior).item() < 0.05  # fooled as well


def top_share_of(features):
    return spectrum(features)[1].item()


def test_bounded_on_random_data():
    """Between 0 and 1 (the debiased estimators may dip a little below 0 for unrelated features)."""
    generator = torch.Generator().manual_seed(11)
    for trial in range(10):
        x = torch.randn(64, 16, generator=generator)
        y = torch.randn(64, 12, generator=generator) + (trial / 5) * x[:, :12]  # from unrelated to related
        for kind, similarity in SIMILARITIES.items():
            low = -0.15 if kind.startswith("debiased") else 0.0
            assert low <= similarity(x, y).item() <= 1.0 + 1e-6, kind


@pytest.mark.parametrize("kind", KINDS)
def test_float32_agrees_with_float64(kind):
    x, y = related(seed=12)
    exact = SIMILARITIES[kind](x, y).item()
    assert SIMILARITIES[kind](x.float(), y.float()).item() == pytest.approx(exact, abs=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_reaches_the_junior_and_is_finite(kind):
    generator = torch.Generator().manual_seed(13)
    healthy = torch.randn(64, 16, generator=generator)
    collapsed = torch.randn(64, 1, generator=generator) * torch.randn(1, 16, generator=generator)  # rank 1
    seniors = [torch.randn(64, 16, generator=generator), healthy[:, :8] + torch.randn(64, 8, generator=generator)]
    for features in (healthy, collapsed):
        junior = features.clone().requires_grad_(True)
        mean, per_senior = repulsion(junior, seniors, kind)
        assert per_senior.shape == (2,) and torch.isfinite(per_senior).all()
        mean.backward()
        assert torch.isfinite(junior.grad).all() and junior.grad.abs().sum() > 0
        assert all(senior.grad is None for senior in seniors)


@pytest.mark.parametrize("kind", KINDS)
def test_no_host_sync_and_no_branch_on_values(kind):
    """On the meta device tensors have shapes but no values: anything that reads a value on the host (.item(),
    `if tensor`, printing) fails there. So the repulsion, its backward pass included, is safe to capture."""
    junior = torch.randn(64, 16, device="meta", requires_grad=True)
    mean, _ = repulsion(junior, [torch.randn(64, 16, device="meta"), torch.randn(64, 3, 2, device="meta")], kind)
    mean.backward()
    assert mean.shape == () and junior.grad.shape == junior.shape


def test_wide_features():
    """Feature maps wider than the batch: the CKA family works, the whitened ones refuse (every canonical
    correlation is 1 there); the debiased estimator refuses fewer than 4 samples."""
    x, y = torch.randn(32, 4, 5, 5, dtype=torch.float64), torch.randn(32, 50, dtype=torch.float64)
    for kind in CKA_FAMILY:
        assert 0 <= SIMILARITIES[kind](x, x[:, :2] + y[:, :1, None, None]).item() <= 1
    for kind in WHITENED:
        with pytest.raises(ValueError, match="fewer feature dimensions"):
            SIMILARITIES[kind](x, y)
    with pytest.raises(ValueError, match="at least 4 samples"):
        debiased_cka(torch.randn(3, 2), torch.randn(3, 2))


@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_similarity_matrix(kind):
    x, y = related(seed=14)
    features = [x, y, x[:, :8] + 0.5 * y[:, :8]]
    matrix = pairwise_similarity(features, kind)
    assert matrix.shape == (3, 3) and torch.equal(matrix, matrix.t())
    for i in range(3):
        for j in range(3):
            assert matrix[i, j].item() == pytest.approx(SIMILARITIES[kind](features[i], features[j]).item(),
                                                        rel=1e-12)
    assert torch.diagonal(matrix).sub(1).abs().max() < 1e-3


# ---- Diagnostics ----------------------------------------------------------------------------------------------------

def spectrum_numpy(x):
    eigenvalues = np.clip(centred_covariance_eigenvalues(x), 0, None)
    shares = eigenvalues / eigenvalues.sum()
    shares = shares[shares > 0]
    return np.exp(-np.sum(shares * np.log(shares))), shares.max(), 1 / np.sum(shares ** 2)


@pytest.mark.parametrize("n, p", [(64, 16), (10, 40)])  # covariance side and Gram side
def test_spectrum_matches_numpy(n, p):
    generator = torch.Generator().manual_seed(n)
    x = torch.randn(n, p, dtype=torch.float64, generator=generator) * torch.linspace(0.1, 3, p, dtype=torch.float64)
    rank, share = spectrum(x)
    expected_rank, expected_share, expected_ratio = spectrum_numpy(x.numpy())
    assert rank.item() == pytest.approx(expected_rank, rel=1e-9)
    assert share.item() == pytest.approx(expected_share, rel=1e-9)
    assert participation_ratio(x).item() == pytest.approx(expected_ratio, rel=1e-9)
    assert 1 < participation_ratio(x).item() < rank.item() < min(n - 1, p)


def test_effective_rank_of_isotropic_and_rank_one_features():
    generator = torch.Generator().manual_seed(15)
    isotropic = torch.randn(4000, 16, dtype=torch.float64, generator=generator)
    rank, share = spectrum(isotropic)
    assert rank.item() > 15.8 and share.item() < 0.08
    assert participation_ratio(isotropic).item() > 15.5
    line = torch.randn(500, 1, dtype=torch.float64, generator=generator) * torch.randn(1, 16, dtype=torch.float64,
                                                                                       generator=generator)
    rank, share = spectrum(line + 2.0)
    assert rank.item() == pytest.approx(1.0, abs=1e-6) and share.item() == pytest.approx(1.0, abs=1e-9)
    assert participation_ratio(line).item() == pytest.approx(1.0, abs=1e-9)


def degenerate(kind, n, p, generator):
    if kind == "constant":  # a different constant per column, some large: centring leaves only rounding residue
        return (torch.randn(1, p, generator=generator) * 100).expand(n, p).contiguous()
    if kind == "zero":
        return torch.zeros(n, p)
    return torch.randn(n, p, generator=generator)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n, p", [(64, 16), (16, 64)])  # narrow and wide taps
@pytest.mark.parametrize("senior_kind", ["constant", "zero", "healthy"])
@pytest.mark.parametrize("junior_kind", ["constant", "zero", "healthy"])
def test_constant_and_zero_taps_give_finite_values_and_gradients(kind, n, p, senior_kind, junior_kind):
    if kind in WHITENED and p >= n - 1:
        pytest.skip("the whitened options refuse taps wider than the batch")
    generator = torch.Generator().manual_seed(n + p)
    junior = degenerate(junior_kind, n, p, generator).requires_grad_(True)
    senior = degenerate(senior_kind, n, p, generator)
    value = SIMILARITIES[kind](junior, senior)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(junior.grad).all()
    if junior_kind != "healthy" or senior_kind != "healthy":
        assert value.item() == 0  # nothing varies on one side: nothing to be similar to, nothing to push


@pytest.mark.parametrize("kind", KINDS)
def test_small_but_real_variation_is_not_taken_for_a_constant(kind):
    """1e-4 of the features' size is far above the rounding residue: still features, with the same similarity."""
    x, y = related(seed=21, dtype=torch.float32)
    offset = 100 * x.abs().amax()
    shrunk = SIMILARITIES[kind](x * 1e-2 + offset, y).item()  # variation / size about 1e-4
    assert shrunk == pytest.approx(SIMILARITIES[kind](x, y).item(), abs=2e-2) and shrunk != 0


def test_gradient_cosine_is_the_mean_squared_cosine_per_sample():
    generator = torch.Generator().manual_seed(31)
    junior = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=generator)
    senior = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=generator)
    expected = np.mean([np.dot(a, b) ** 2 / (np.dot(a, a) * np.dot(b, b))
                        for a, b in zip(junior.flatten(1).numpy(), senior.flatten(1).numpy())])
    assert gradient_cosine(junior, senior).item() == pytest.approx(expected, rel=1e-12)
    assert gradient_cosine(junior, junior).item() == pytest.approx(1.0, abs=1e-12)
    assert gradient_cosine(junior, -3 * junior).item() == pytest.approx(1.0, abs=1e-12)  # opposite: same line
    assert gradient_cosine(junior, senior).item() == pytest.approx(gradient_cosine(senior, junior).item(), rel=1e-12)
    orthogonal = torch.stack([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])])
    assert gradient_cosine(orthogonal, orthogonal.flip(0)).item() == 0


def test_gradient_cosine_has_finite_gradients_without_host_sync():
    junior = torch.zeros(4, 1, 8, 8, requires_grad=True)  # a junior whose error does not move with its input
    value = gradient_cosine(junior, torch.randn(4, 1, 8, 8))
    value.backward()
    assert value.item() == 0 and torch.isfinite(junior.grad).all()
    meta = torch.randn(4, 1, 8, 8, device="meta", requires_grad=True)
    mean, _ = repulsion(meta, [torch.randn(4, 1, 8, 8, device="meta")], "gradient_cosine")
    mean.backward()
    assert meta.grad.shape == meta.shape
