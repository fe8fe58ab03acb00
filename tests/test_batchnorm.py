"""Precise BatchNorm statistics and the eval-versus-train reconstruction check."""
import copy

import pytest
import torch
from torch import nn

import models
from utils.errors import UserError
from utils.method.batchnorm import eval_and_train_errors, eval_mode_much_worse, eval_mode_warning, recompute_bn_stats

NETWORKS = list(models.MODELS)
SIZE = 16  # the smallest image size the backbones take: the encoder ends at 1 x 1


def smooth_images(count, seed):
    """Blurry random pictures in [-1, 1], shaped like model input: (count, 1, SIZE, SIZE)."""
    coarse = torch.randn(count, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    return torch.tanh(nn.functional.interpolate(coarse, size=SIZE, mode="bilinear", align_corners=False))


def build(network, seed=0):
    torch.manual_seed(seed)
    return models.place(models.build({"network": network, "img_size": SIZE}), "cpu")


def batchnorms(learner):
    return [module for module in learner.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


def scramble_bn_stats(learner, seed):
    """Running statistics that have nothing to do with any data (as if left by unrelated last batches)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in batchnorms(learner):
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=generator) * 3)
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=generator) * 5 + 0.01)
            bn.num_batches_tracked.fill_(12345)


def same_state(a, b):
    return all(torch.equal(a.state_dict()[key], b.state_dict()[key]) for key in a.state_dict())


@pytest.fixture(scope="module")
def trained():
    """A small AE trained briefly on smooth images (so its train-mode error is well below the images' energy)."""
    images = smooth_images(160, seed=1)
    learner = build("AE", seed=1)
    optimizer = torch.optim.Adam(learner.parameters(), lr=2e-3, betas=(0.5, 0.999))
    learner.train()
    for step in range(150):
        x = images[(step * 16) % 160:][:16]
        optimizer.zero_grad()
        learner.loss(learner(x), x)[0].backward()
        optimizer.step()
    return learner, images


@pytest.mark.parametrize("network", NETWORKS)
def test_running_stats_are_the_average_over_the_pass(network):
    """running_mean = the mean of each BN layer's inputs over the pass (equal batches, remainder dropped);
    running_var = the average of the per-batch unbiased variances (what BatchNorm stores in train mode)."""
    learner = build(network)
    scramble_bn_stats(learner, seed=0)
    inputs = {bn: [] for bn in batchnorms(learner)}
    hooks = [bn.register_forward_pre_hook(lambda module, args: inputs[module].append(args[0].detach().double()))
             for bn in inputs]
    images = smooth_images(50, seed=2)
    recompute_bn_stats(learner, images, batch_size=8, seed=3)
    for hook in hooks:
        hook.remove()
    for bn, batches in inputs.items():
        assert [len(batch) for batch in batches] == [8] * 6  # 50 // 8 equal batches, the last 2 images left out
        dims = [0, 2, 3] if batches[0].dim() == 4 else [0]
        mean = torch.stack([batch.mean(dim=dims) for batch in batches]).mean(dim=0)
        var = torch.stack([batch.var(dim=dims, unbiased=True) for batch in batches]).mean(dim=0)
        assert torch.allclose(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        assert torch.allclose(bn.running_var.double(), var, rtol=1e-5, atol=1e-6)
        biased = torch.stack([batch.var(dim=dims, unbiased=False) for batch in batches]).mean(dim=0)
        assert not torch.allclose(bn.running_var.double(), biased, rtol=1e-5, atol=1e-6)  # the test can tell them apart
        assert bn.num_batches_tracked.item() == 6 and bn.momentum == 0.1  # momentum restored


def test_the_pass_is_a_seeded_shuffle_of_distinct_images():
    learner = build("AE")
    first_layer = batchnorms(learner)[0]
    seen = []
    hook = learner.encoder[0][0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    images = smooth_images(50, seed=2)
    recompute_bn_stats(learner, images, batch_size=8, seed=3)
    hook.remove()
    used = torch.cat(seen)
    matches = (used.flatten(1)[:, None, :] == images.flatten(1)[None, :, :]).all(dim=2)
    assert matches.sum(dim=1).eq(1).all() and matches.any(dim=0).sum() == 48  # 48 different images, each once
    assert not torch.equal(used, images[:48])  # shuffled, as training batches are
    assert first_layer.num_batches_tracked.item() == 6


@pytest.mark.parametrize("network", NETWORKS)
def test_nothing_depends_on_the_old_statistics_and_weights_stay(network):
    learner = build(network)
    other = copy.deepcopy(learner)
    scramble_bn_stats(other, seed=4)
    weights = {name: value.clone() for name, value in learner.named_parameters()}
    images = smooth_images(40, seed=5)
    learner.eval()
    other.train()
    recompute_bn_stats(learner, images, batch_size=8, seed=6)
    recompute_bn_stats(other, images, batch_size=8, seed=6)
    assert same_state(learner, other)
    assert all(torch.equal(value, weights[name]) for name, value in learner.named_parameters())
    assert not learner.training and other.training  # each left in the mode it was in


def test_fewer_images_than_a_batch_is_a_user_error():
    with pytest.raises(UserError, match="fewer than one batch of 64"):
        recompute_bn_stats(build("AE"), smooth_images(10, seed=0), batch_size=64)


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("training", [False, True])
def test_error_check_changes_nothing(network, training):
    learner = build(network)
    scramble_bn_stats(learner, seed=7)
    learner.train(training)
    before = copy.deepcopy(learner)
    eval_error, train_error = eval_and_train_errors(learner, smooth_images(20, seed=8), batch_size=8)
    assert same_state(learner, before) and learner.training == training
    assert eval_error > 0 and train_error > 0


def test_errors_are_the_mse_of_each_mode():
    learner = build("AE-U")
    images = smooth_images(20, seed=9)
    eval_error, train_error = eval_and_train_errors(learner, images, batch_size=8)  # two batches of 8
    with torch.no_grad():
        expected_eval = (learner.eval()(images[:16])["x_hat"] - images[:16]).pow(2).mean().item()
        reference = copy.deepcopy(learner).train()
        expected_train = sum((reference(x)["x_hat"] - x).pow(2).mean().item() for x in images[:16].split(8)) / 2
    assert eval_error == pytest.approx(expected_eval, rel=1e-5)
    assert train_error == pytest.approx(expected_train, rel=1e-5)


def test_corrupted_statistics_are_flagged_healthy_ones_not(trained):
    learner, images = trained
    learner = copy.deepcopy(learner)
    slice_ = images[:64]  # the check runs on training images: it is about BatchNorm, not about generalisation
    recompute_bn_stats(learner, images, batch_size=16, seed=0)
    healthy_eval, healthy_train = eval_and_train_errors(learner, slice_, batch_size=16)
    assert healthy_train < 0.5 * slice_.pow(2).mean().item()  # it did learn to reconstruct
    assert not eval_mode_much_worse(healthy_eval, healthy_train)
    assert eval_mode_warning("learner 1", healthy_eval, healthy_train) is None

    with torch.no_grad():
        for bn in batchnorms(learner):
            bn.running_mean.add_(0.5 * bn.running_var.sqrt())  # statistics half a standard deviation off
    broken_eval, broken_train = eval_and_train_errors(learner, slice_, batch_size=16)
    assert broken_train == healthy_train  # train mode never reads the running statistics
    assert eval_mode_much_worse(broken_eval, broken_train)
    line = eval_mode_warning("learner 1", broken_eval, broken_train)
    assert line.startswith("learner 1: reconstruction error in eval mode") and "\n" not in line


def test_much_worse_rule():
    assert eval_mode_much_worse(0.071, 0.040)  # a broken learner seen on real images
    assert not eval_mode_much_worse(0.042, 0.040)
    assert eval_mode_much_worse(0.06, 0.040, ratio=1.4) and not eval_mode_much_worse(0.05, 0.040, ratio=1.4)
