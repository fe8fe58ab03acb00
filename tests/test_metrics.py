"""Image and pixel metrics against scikit-learn and against hand-checkable cases; chi-square distance properties."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from utils.errors import UserError
from utils.report import metrics
from utils.report.metrics import chi_square_distance, image_metrics


def pixel_metrics(masks, maps, **options) -> dict:
    """The pixel metrics of one map."""
    return metrics.pixel_metrics_of_maps(masks, {"map": maps}, **options)["map"]


def test_image_metrics_equal_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=300)
    scores = rng.normal(size=300) + 0.8 * labels
    result = image_metrics(labels, scores)
    assert result["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert 0.5 < result["auc"] < 1.0


def test_image_metrics_hand_checkable_cases():
    labels = [0, 0, 1, 1]
    assert image_metrics(labels, [0.1, 0.2, 0.8, 0.9]) == {"auc": 1.0, "ap": 1.0}
    assert image_metrics(labels, [0.9, 0.8, 0.2, 0.1])["auc"] == 0.0
    # One abnormal above both normals, one below both: AUC 2/4; AP = (1/1 + 2/4) / 2.
    result = image_metrics(labels, [0.2, 0.3, 0.9, 0.1])
    assert result["auc"] == pytest.approx(0.5)
    assert result["ap"] == pytest.approx(0.75)


@pytest.mark.parametrize("labels, scores, phrase", [
    ([1, 1, 1], [0.1, 0.2, 0.3], "abnormal"),
    ([0, 0, 0], [0.1, 0.2, 0.3], "normal"),
    ([0, 1, 1], [0.1, np.nan, 0.3], "NaN"),
    ([0, 1, 1], [0.1, np.inf, 0.3], "NaN"),
    ([0, 1], [0.1, 0.2, 0.3], "must match"),
    ([0, 2], [0.1, 0.2], "0 (normal) or 1"),
])
def test_image_metrics_reject_bad_input(labels, scores, phrase):
    with pytest.raises(UserError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        image_metrics(labels, scores)


def _pixel_case(seed=0, shape=(3, 1, 12, 12)):
    rng = np.random.default_rng(seed)
    masks = np.zeros(shape, dtype=bool)
    masks[..., 3:7, 4:9] = True
    masks[1] = False  # one image without any abnormal pixel
    # Rounded so that ties occur, which is where threshold handling goes wrong.
    maps = np.round(rng.random(shape) + 0.6 * masks, 1).astype(np.float32)
    return masks, maps


def _brute_force_best_dice(masks, maps):
    truth, values = masks.ravel(), maps.ravel()
    best = 0.0
    for threshold in np.unique(values):
        predicted = values >= threshold
        dice = 2 * np.sum(predicted & truth) / (predicted.sum() + truth.sum())
        best = max(best, dice)
    return best


def test_pixel_metrics_equal_sklearn_and_brute_force_dice():
    masks, maps = _pixel_case()
    result = pixel_metrics(masks, maps)
    assert set(result) == {"pixel_auroc", "pixel_ap", "pixel_best_dice"}
    truth, values = masks.ravel(), maps.ravel()
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(truth, values), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(truth, values), abs=1e-12)
    assert result["pixel_best_dice"] == pytest.approx(_brute_force_best_dice(masks, maps), abs=1e-12)
    # Squeezed (N, H, W) masks give the same numbers.
    assert pixel_metrics(masks[:, 0], maps[:, 0]) == result


def test_pixel_best_dice_is_one_for_a_perfect_map():
    masks, _ = _pixel_case()
    assert pixel_metrics(masks, masks.astype(np.float32) * 3.0)["pixel_best_dice"] == 1.0


def test_pixel_metrics_subsample_is_deterministic_and_close():
    rng = np.random.default_rng(1)
    masks = np.zeros((8, 64, 64), dtype=bool)
    masks[:, 10:30, 20:44] = True
    maps = rng.random(masks.shape) + 0.6 * masks
    full = pixel_metrics(masks, maps)
    sampled = pixel_metrics(masks, maps, max_pixels=10_000)
    assert sampled == pixel_metrics(masks, maps, max_pixels=10_000)  # seeded, so repeatable
    assert sampled != full  # really computed on a subset
    for key in full:
        assert sampled[key] == pytest.approx(full[key], abs=0.02)


def test_pixel_metrics_skipped_without_masks():
    _, maps = _pixel_case()
    assert pixel_metrics(np.zeros(maps.shape, dtype=bool), maps) == {}


def test_pixel_metrics_reject_mismatched_or_nonfinite_maps():
    masks, maps = _pixel_case()
    with pytest.raises(UserError, match="shape"):
        pixel_metrics(masks, maps[:2])
    maps[0, 0, 0, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        pixel_metrics(masks, maps)


def test_pixel_metrics_of_several_maps_draw_one_subsample(monkeypatch):
    """Each map gets the numbers pixel_metrics gives it alone, from one subsample drawn once for all maps."""
    rng = np.random.default_rng(2)
    masks = np.zeros((4, 64, 64), dtype=bool)
    masks[:, 5:25, 30:50] = True
    maps = {name: rng.random(masks.shape) + shift * masks for name, shift in (("a", 0.2), ("b", 0.5), ("c", 0.9))}
    draws = []
    original = np.random.default_rng
    monkeypatch.setattr(metrics.np.random, "default_rng", lambda *args: draws.append(args) or original(*args))
    together = metrics.pixel_metrics_of_maps(masks, maps, max_pixels=5_000)
    assert len(draws) == 1
    for name, values in maps.items():
        assert together[name] == pixel_metrics(masks, values, max_pixels=5_000)
    assert together["a"]["pixel_auroc"] < together["b"]["pixel_auroc"] < together["c"]["pixel_auroc"]


def test_chi_square_identical_is_zero_disjoint_is_one_and_symmetric():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=500)
    assert chi_square_distance(normal, normal) == pytest.approx(0.0, abs=1e-15)
    assert chi_square_distance(normal, normal + 100) == pytest.approx(1.0)
    abnormal = rng.normal(0.7, 1.3, size=300)
    distance = chi_square_distance(normal, abnormal)
    assert 0.0 < distance < 1.0
    assert chi_square_distance(abnormal, normal) == pytest.approx(distance)


def test_chi_square_matches_the_formula_on_a_hand_case():
    # Two bins over [0, 2]: p = (1, 0), q = (1/2, 1/2) -> 0.5 * ((1/2)^2 / (3/2) + (1/2)^2 / (1/2)) = 1/3.
    assert chi_square_distance([0.0, 0.0], [0.0, 2.0], bins=2) == pytest.approx(1 / 3)
