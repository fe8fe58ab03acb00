"""RAR: linear CKA against a direct NumPy transcription of the definition, its invariances and its behaviour on the
degenerate taps training meets; the repulsion term; the feature-spectrum diagnostics."""
import numpy as np
import pytest
import torch

from utils.method.feature_shape import spectrum
from utils.method.rar import features_of, linear_cka, pairwise_cka, repulsion

SIMILARITIES = {"linear_cka": linear_cka}  # the one similarity RAR uses; the others are at commit 81a2410
KINDS = list(SIMILARITIES)

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


@pytest.mark.parametrize("kind", KINDS)
def test_symmetric(kind):
    x, y = related(seed=6)
    assert SIMILARITIES[kind](x, y).item() == pytest.approx(SIMILARITIES[kind](y, x).item(), rel=1e-9)


def test_bounded_on_random_data():
    """Between 0 and 1."""
    generator = torch.Generator().manual_seed(11)
    for trial in range(10):
        x = torch.randn(64, 16, generator=generator)
        y = torch.randn(64, 12, generator=generator) + (trial / 5) * x[:, :12]  # from unrelated to related
        for kind, similarity in SIMILARITIES.items():
            assert 0.0 <= similarity(x, y).item() <= 1.0 + 1e-6, kind


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
        mean, per_senior = repulsion(junior, seniors)
        assert per_senior.shape == (2,) and torch.isfinite(per_senior).all()
        mean.backward()
        assert torch.isfinite(junior.grad).all() and junior.grad.abs().sum() > 0
        assert all(senior.grad is None for senior in seniors)


@pytest.mark.parametrize("kind", KINDS)
def test_no_host_sync_and_no_branch_on_values(kind):
    """On the meta device tensors have shapes but no values: anything that reads a value on the host (.item(),
    `if tensor`, printing) fails there. So the repulsion, its backward pass included, is safe to capture."""
    junior = torch.randn(64, 16, device="meta", requires_grad=True)
    mean, _ = repulsion(junior, [torch.randn(64, 16, device="meta"), torch.randn(64, 3, 2, device="meta")])
    mean.backward()
    assert mean.shape == () and junior.grad.shape == junior.shape


@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_similarity_matrix(kind):
    x, y = related(seed=14)
    features = [x, y, x[:, :8] + 0.5 * y[:, :8]]
    matrix = pairwise_cka(features)
    assert matrix.shape == (3, 3) and torch.equal(matrix, matrix.t())
    for i in range(3):
        for j in range(3):
            assert matrix[i, j].item() == pytest.approx(SIMILARITIES[kind](features[i], features[j]).item(),
                                                        rel=1e-12)
    assert torch.diagonal(matrix).sub(1).abs().max() < 1e-3


def spectrum_numpy(x):
    eigenvalues = np.clip(centred_covariance_eigenvalues(x), 0, None)
    shares = eigenvalues / eigenvalues.sum()
    shares = shares[shares > 0]
    return np.exp(-np.sum(shares * np.log(shares))), shares.max()


@pytest.mark.parametrize("n, p", [(64, 16), (10, 40)])  # covariance side and Gram side
def test_spectrum_matches_numpy(n, p):
    generator = torch.Generator().manual_seed(n)
    x = torch.randn(n, p, dtype=torch.float64, generator=generator) * torch.linspace(0.1, 3, p, dtype=torch.float64)
    rank, share = spectrum(x)
    expected_rank, expected_share = spectrum_numpy(x.numpy())
    assert rank.item() == pytest.approx(expected_rank, rel=1e-9)
    assert share.item() == pytest.approx(expected_share, rel=1e-9)
    assert 1 < rank.item() < min(n - 1, p)


def test_effective_rank_of_isotropic_and_rank_one_features():
    generator = torch.Generator().manual_seed(15)
    isotropic = torch.randn(4000, 16, dtype=torch.float64, generator=generator)
    rank, share = spectrum(isotropic)
    assert rank.item() > 15.8 and share.item() < 0.08
    line = torch.randn(500, 1, dtype=torch.float64, generator=generator) * torch.randn(1, 16, dtype=torch.float64,
                                                                                       generator=generator)
    rank, share = spectrum(line + 2.0)
    assert rank.item() == pytest.approx(1.0, abs=1e-6) and share.item() == pytest.approx(1.0, abs=1e-9)


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


def test_features_of_is_the_learners_tapped_features_in_batches():
    from models.ae import AE
    learner = AE(img_size=32).eval()
    images = torch.rand(37, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        whole = learner(images)["features"]
    assert torch.allclose(features_of(learner, images, batch_size=8), whole, atol=1e-6)
