"""Linear CKA against a direct NumPy transcription of the definition, and its invariances."""
import numpy as np
import pytest
import torch

from utils.cka import linear_cka, repulsion


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
