"""The three scores: batched maps equal per-image computations and the formulas of the paper (see
utils/method/dsu.py)."""
import pytest
import torch

import models
from utils.method.dsu import SCORES, image_scores, score_maps
from utils.run.config import Model

NETWORKS = list(models.MODELS)


def ensemble(network, k=3, img_size=32):
    """K learners with distinct weights and non-default BatchNorm statistics, frozen and in eval mode."""
    learners = []
    for index in range(k):
        torch.manual_seed(index)
        learner = models.build(models.backbone_args(Model(network=network), img_size))
        with torch.no_grad():
            learner.train()
            learner(torch.randn(16, 1, img_size, img_size))  # move the running statistics off their defaults
        learners.append(learner.eval().requires_grad_(False))
    return learners


def reference_maps(learners, image):
    """Straight from the formulas, for one image (batch of 1), written without the batched helper's tricks."""
    x_hats, variances, terms = [], [], []
    for learner in learners:
        x = image.clone().requires_grad_(True)
        out = learner(x)
        variance = torch.exp(out["log_var"]) if "log_var" in out else torch.ones_like(out["x_hat"])
        if "log_var" in out:
            error = torch.exp(-out["log_var"]) * (out["x_hat"] - x) ** 2
        else:
            error = (out["x_hat"] - x).abs()
        gradient = torch.autograd.grad(error.mean(), x)[0]
        x_hats.append(out["x_hat"].detach())
        variances.append(variance.detach())
        terms.append((out["x_hat"].detach() - image).abs() * gradient)
    x_hats, variance, terms = torch.stack(x_hats), torch.stack(variances).mean(0), torch.stack(terms)
    return {"rec": (image - x_hats.mean(0)) ** 2 / variance,
            "unc": torch.sqrt(x_hats.var(0, unbiased=True) / variance),
            "dsu": torch.std(terms / variance.sqrt(), dim=0, unbiased=True)}


@pytest.mark.parametrize("network", NETWORKS)
def test_batched_equals_per_image(network):
    learners = ensemble(network)
    images = torch.rand(6, 1, 32, 32) * 2 - 1
    batched = score_maps(learners, images)
    for row in range(len(images)):
        expected = reference_maps(learners, images[row:row + 1])
        for name in SCORES:
            assert torch.allclose(batched[name][row:row + 1], expected[name], rtol=1e-4, atol=1e-9), name


def test_dsu_is_not_the_gradient_of_the_batch_mean():
    """The gradient of the batch mean would shrink every map by the batch size: guard against that mistake."""
    learners = ensemble("AE")
    images = torch.rand(4, 1, 32, 32) * 2 - 1
    alone = score_maps(learners, images[:1])["dsu"]
    together = score_maps(learners, images)["dsu"][:1]
    assert torch.allclose(alone, together, rtol=1e-4, atol=1e-10)
    assert together.abs().max() > 0


def test_image_scores_are_map_means_and_ensemble_is_mean():
    learners = ensemble("AE-U", k=2)
    images = torch.rand(3, 1, 32, 32)
    maps = score_maps(learners, images)
    scores = image_scores(maps)
    for name in SCORES:
        assert torch.allclose(scores[name], maps[name].mean(dim=(1, 2, 3)))
    expected = torch.stack([learner(images)["x_hat"] for learner in learners]).mean(0)
    assert torch.allclose(maps["x_hat"], expected, atol=1e-6)


def test_identical_learners_have_no_disagreement():
    learner = ensemble("AE", k=1)[0]
    maps = score_maps([learner, learner], torch.rand(2, 1, 32, 32))
    assert maps["unc"].abs().max() == 0
    assert maps["dsu"].abs().max() == 0
    assert maps["rec"].abs().max() > 0
