"""Each backbone's forward contract, architecture and loss."""
import pytest
import torch
from torch import nn

import models
from utils.run.config import Model

NETWORKS = list(models.MODELS)


def build(network, img_size=32, **overrides):
    cfg = Model(network=network, **overrides)
    return models.build(models.backbone_args(cfg, img_size))


@pytest.mark.parametrize("network", NETWORKS)
def test_forward_contract(network):
    torch.manual_seed(0)
    model = build(network)
    out = model(torch.randn(4, 1, 32, 32))
    assert out["x_hat"].shape == (4, 1, 32, 32)
    assert out["features"].shape == (4, 16)  # default tap: z, latent size 16
    assert ("log_var" in out) == (network == "AE-U")
    assert ("att" in out) == (network == "MemAE")
    if network == "AE-U":
        assert out["log_var"].shape == (4, 1, 32, 32)


@pytest.mark.parametrize("layer, shape", [(0, (16, 16, 16)), (1, (32, 8, 8)), (2, (64, 4, 4)), (3, (64, 2, 2)),
                                          (4, (16,)), (5, (64, 2, 2)), (6, (64, 4, 4)), (7, (32, 8, 8)),
                                          (8, (16, 16, 16))])
def test_feature_taps(layer, shape):
    model = build("AE", layer=layer)
    assert model(torch.randn(2, 1, 32, 32))["features"].shape == (2, *shape)


def test_width_multiplier_and_latent_size():
    model = build("AE", img_size=64, mp=2, ls=8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128]
    assert model(torch.randn(2, 1, 64, 64))["features"].shape == (2, 8)


@pytest.mark.parametrize("network", NETWORKS)
def test_convolutions_have_no_bias(network):
    convs = [m for m in build(network).modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 8
    assert all(c.bias is None for c in convs)
    assert convs[-1].out_channels == (2 if network == "AE-U" else 1)


def test_last_decoder_block_is_bare():
    """No BatchNorm or ReLU after the last transposed convolution: the output can be negative and unbounded."""
    model = build("AE").eval()
    assert isinstance(model.decoder[-1], nn.ConvTranspose2d)
    assert model(torch.randn(8, 1, 32, 32))["x_hat"].min() < 0


def test_ae_loss():
    model = build("AE")
    x = torch.randn(3, 1, 32, 32)
    out = model(x)
    loss, terms = model.loss(out, x)
    assert loss.item() == pytest.approx(((out["x_hat"] - x) ** 2).mean().item(), rel=1e-6)
    assert set(terms) == {"rec"}


def test_aeu_loss():
    model = build("AE-U")
    x = torch.randn(3, 1, 32, 32)
    out = model(x)
    loss, terms = model.loss(out, x)
    expected = (torch.exp(-out["log_var"]) * (out["x_hat"] - x) ** 2).mean() + out["log_var"].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(terms) == {"rec", "log_var"}


def test_memae_memory_and_loss():
    torch.manual_seed(0)
    model = build("MemAE", shrink_thres=0.05)
    assert model.memory.shape == (25, 16)
    assert model.memory.abs().max() <= 1 / 4  # uniform(-1/sqrt(ls), 1/sqrt(ls))
    x = torch.randn(6, 1, 32, 32)
    out = model(x)
    att = out["att"]
    assert torch.allclose(att.sum(dim=1), torch.ones(6), atol=1e-5)
    assert (att == 0).any(), "hard shrinkage should zero the weights below the threshold"
    loss, terms = model.loss(out, x)
    entropy = (-att * torch.log(att + 1e-12)).sum(dim=1).mean()
    assert terms["entropy"].item() == pytest.approx(entropy.item(), rel=1e-6)
    assert loss.item() == pytest.approx((((out["x_hat"] - x) ** 2).mean() + 0.0002 * entropy).item(), rel=1e-6)


def test_memae_without_shrinkage_is_plain_softmax():
    model = build("MemAE", shrink_thres=0.0)
    z = torch.randn(4, 16)
    _, extra = model.latent(z)
    assert torch.allclose(extra["att"], torch.softmax(z @ model.memory.t(), dim=1))


def test_memae_tap_is_z_before_memory():
    model = build("MemAE").eval()
    x = torch.randn(2, 1, 32, 32)
    z = model.to_latent(nn.Sequential(*model.encoder)(x).flatten(1))
    assert torch.allclose(model(x)["features"], z)


def test_backbone_args_rebuild_the_same_network():
    cfg = Model(network="MemAE", mem_dim=7, shrink_thres=0.01)
    args = models.backbone_args(cfg, 32)
    assert args == {"network": "MemAE", "img_size": 32, "mp": 1, "ls": 16, "layer": 4, "mem_dim": 7,
                    "shrink_thres": 0.01, "entropy_loss_weight": 0.0002}
    a, b = models.build(args), models.build(args)
    b.load_state_dict(a.state_dict())
    assert b.memory.shape == (7, 16)
