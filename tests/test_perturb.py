"""Model.repel_on=pasted: the pasted copy of the training set, and a junior compared with its seniors on it."""
import pytest
import torch

import train
from datasets.medad import load_images, read_split
from models import to_model_input
from tests.conftest import write_config
from tests.test_pipeline import assert_same_weights, weights
from utils.method import ensemble
from utils.method.cka import gradient_cosine, linear_cka
from utils.method.perturb import rectangles, self_pasted
from utils.run import checkpoint, config


def images_of(n=16, size=32, seed=0):
    """Smooth random images on the model's [-1, 1] scale, every pixel distinct (so a moved rectangle shows)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=generator, dtype=torch.float64) * 2 - 1


def test_each_image_gets_one_rectangle_of_itself_pasted_elsewhere():
    images = images_of()
    before = images.clone()
    pasted = self_pasted(images, seed=5)
    assert torch.equal(images, before) and pasted.shape == images.shape and pasted.dtype == images.dtype
    changed = 0
    for k, (h, w, top, left, to_top, to_left) in enumerate(rectangles(images, 5).tolist()):
        assert 32 // 8 <= h <= 32 // 4 and 32 // 8 <= w <= 32 // 4
        assert 0 <= top <= 32 - h and 0 <= left <= 32 - w and 0 <= to_top <= 32 - h and 0 <= to_left <= 32 - w
        target = (slice(None), slice(to_top, to_top + h), slice(to_left, to_left + w))
        assert torch.equal(pasted[k][target], images[k, :, top:top + h, left:left + w])
        outside = torch.ones(32, 32, dtype=torch.bool)
        outside[target[1:]] = False
        assert torch.equal(pasted[k][:, outside], images[k][:, outside])  # nothing else changes
        changed += not torch.equal(pasted[k], images[k])
    assert changed == len(images)  # distinct pixels: a rectangle moved anywhere else shows


def test_the_copy_depends_on_the_seed_alone_and_lands_on_the_bright_object():
    images = images_of()
    assert torch.equal(self_pasted(images, 5), self_pasted(images.clone(), 5))
    assert not torch.equal(self_pasted(images, 5), self_pasted(images, 6))
    dark_left = images.clone()
    dark_left[..., :16] = -1  # an object on the right half, empty background on the left
    for h, w, top, left, to_top, to_left in rectangles(dark_left, 5).tolist():
        assert left + w // 2 >= 16 and to_left + w // 2 >= 16  # both centres on the object (clamping moves neither)


def test_a_junior_is_compared_with_its_seniors_on_the_pasted_copy(tiny_root, tmp_path):
    """Trained end to end on the cached (fast) and uncached paths alike; learner 0 is the one repel_on=training
    trains (it has no seniors); the junior's loss is its reconstruction loss on the training batch plus Lambda x
    linear CKA of its and its senior's features on the pasted batch."""
    settings = {"Model": {"repel_on": "pasted"}, "Solver": {"num_epoch": 1, "Lambda": 0.5}}
    runs = {name: write_config(tmp_path / f"{name}.yaml", tiny_root, tmp_path / name, Exp={"fast": name != "eager"},
                               **settings) for name in ("fast", "eager")}
    runs["published"] = write_config(tmp_path / "published.yaml", tiny_root, tmp_path / "published",
                                     Solver=settings["Solver"])
    for path in runs.values():
        train.main(["--config", str(path)])
    for index in (0, 1):
        fast, eager = (checkpoint.load(checkpoint.learner_path(tmp_path / name, index))["model"]
                       for name in ("fast", "eager"))
        assert all(torch.allclose(fast[key].float(), eager[key].float(), atol=1e-5) for key in fast)
    assert_same_weights(weights(tmp_path / "fast", 0), weights(tmp_path / "published", 0))
    assert not torch.equal(weights(tmp_path / "fast", 1)["encoder.0.0.weight"],
                           weights(tmp_path / "published", 1)["encoder.0.0.weight"])

    cfg = config.load(runs["fast"])
    senior, junior = checkpoint.load_learners(tmp_path / "fast", cfg, torch.device("cpu"))
    split = read_split(tiny_root / "tiny")
    x = to_model_input(load_images(split.directory, split.train[:16], 32))
    on = self_pasted(x, cfg.Solver.seed)
    junior.train()
    _, terms = train.training_loss(junior, x, [ensemble.features_of(senior, on)], 0.5, x_repel=on)
    with torch.no_grad():
        out, out_pasted = junior(x), junior(on)
        expected = linear_cka(out_pasted["features"], ensemble.features_of(senior, on))
    assert terms["repulsion"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx((junior.loss(out, x)[0] + 0.5 * expected).item(), rel=1e-5)
    on_training = linear_cka(out["features"], ensemble.features_of(senior, x))
    assert abs(on_training.item() - expected.item()) > 1e-4  # the pasted images, not the training batch


def test_gradient_repulsion_on_pasted_images_compares_the_input_gradients_there(tiny_root, tmp_path):
    cfg = config.load(write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run"))
    senior, junior = (train.new_learner(cfg, index, torch.device("cpu"))[0] for index in (0, 1))
    senior.eval()
    split = read_split(tiny_root / "tiny")
    x = to_model_input(load_images(split.directory, split.train[:8], 32))
    on = self_pasted(x, 3)
    senior_gradient = ensemble.input_gradients_of(senior, on)
    junior.train()
    _, terms = train.training_loss(junior, x, [senior_gradient], 0.5, "gradient_cosine", x_repel=on)
    on_in = on.clone().requires_grad_(True)
    own = torch.autograd.grad(junior.score_error(junior(on_in), on_in).flatten(1).mean(dim=1).sum(), on_in)[0]
    assert terms["repulsion"].item() == pytest.approx(gradient_cosine(own, senior_gradient).item(), rel=1e-5)
    _, at_training = train.training_loss(junior, x, [ensemble.input_gradients_of(senior, x)], 0.5, "gradient_cosine")
    assert abs(at_training["repulsion"].item() - terms["repulsion"].item()) > 1e-4


def test_lambda_0_on_pasted_images_is_the_plain_ensemble_exactly(tiny_root, tmp_path):
    """Nothing is repelled, so no second forward pass moves the junior's BatchNorm statistics either."""
    for name, repel_on in (("pasted", "pasted"), ("plain", "training")):
        train.main(["--config", str(write_config(tmp_path / f"{name}.yaml", tiny_root, tmp_path / name,
                                                 Model={"repel_on": repel_on},
                                                 Solver={"num_epoch": 1, "Lambda": 0.0}))])
    assert_same_weights(weights(tmp_path / "pasted", 1), weights(tmp_path / "plain", 1))
