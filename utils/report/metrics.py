"""Image- and pixel-level anomaly detection metrics (label 1 = abnormal), computed by scikit-learn, and the chi-square
distance between the normal and abnormal score histograms."""
import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from utils.errors import UserError


def image_metrics(labels, scores) -> dict:
    """ROC AUC and average precision of per-image anomaly scores: {"auc": float, "ap": float}."""
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    _check_labels_and_scores(labels, scores, what="image")
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "ap": float(average_precision_score(labels, scores)),
    }


def pixel_metrics_of_maps(masks, maps: dict, max_pixels=20_000_000, seed=0) -> dict:
    """Pixel ROC AUC, pixel average precision and best Dice of each of several anomaly maps of the same images
    against ground-truth masks: {name: metrics}.

    masks: (N, H, W) or (N, 1, H, W), nonzero = abnormal pixel; maps: {name: float array of the same shape}.
    Each name gets {"pixel_auroc", "pixel_ap", "pixel_best_dice"}, or {} when no mask has an abnormal pixel
    (data sets without masks are given all-zero masks and simply get no pixel metrics).

    When N*H*W exceeds max_pixels, every map is scored on one uniform random subsample of max_pixels pixels,
    drawn once, without replacement and without stratification, by a generator seeded with `seed`, so the same
    inputs always give the same numbers. This keeps memory bounded for large test sets; the values are estimates.
    """
    masks = np.asarray(masks)
    for values in maps.values():
        if masks.shape != np.shape(values):
            raise UserError(f"pixel masks have shape {masks.shape} but anomaly maps have shape {np.shape(values)}; "
                            "they must match")
    truth = masks.ravel() > 0
    if not truth.any():
        return {name: {} for name in maps}
    keep = None
    if truth.size > max_pixels:
        # shuffle=False: the sample comes unordered anyway, and numpy then needs no array of every pixel index
        keep = np.sort(np.random.default_rng(seed).choice(truth.size, size=max_pixels, replace=False, shuffle=False))
        truth = truth[keep]
        if not truth.any():
            raise UserError(f"the {max_pixels} sampled pixels hold no abnormal pixel; raise max_pixels")
    results = {}
    for name, values in maps.items():
        values = np.asarray(values).ravel()
        results[name] = _pixel_metrics(truth, (values if keep is None else values[keep]).astype(np.float64))
    return results


def _pixel_metrics(truth, values) -> dict:
    _check_labels_and_scores(truth.astype(np.int64), values, what="pixel")
    # Dice of the mask "map >= t" is the F1 score at threshold t, so the best Dice over all thresholds, pooled
    # over every pixel of every image, is the largest F1 along the precision-recall curve.
    precision, recall, _ = precision_recall_curve(truth, values)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return {
        "pixel_auroc": float(roc_auc_score(truth, values)),
        "pixel_ap": float(average_precision_score(truth, values)),
        "pixel_best_dice": float(f1.max()),
    }


def chi_square_distance(normal_scores, abnormal_scores, bins=50) -> float:
    """Chi-square distance between the two score histograms, in [0, 1]; 0 = same shape, 1 = no overlap.

    p and q are the normalised histograms over common bin edges; distance = 0.5 * sum (p - q)^2 / (p + q)
    over the bins where p + q > 0.
    """
    normal_scores = finite_1d(normal_scores, "normal scores")
    abnormal_scores = finite_1d(abnormal_scores, "abnormal scores")
    edges = np.histogram_bin_edges(np.concatenate([normal_scores, abnormal_scores]), bins=bins)
    p = np.histogram(normal_scores, bins=edges)[0] / normal_scores.size
    q = np.histogram(abnormal_scores, bins=edges)[0] / abnormal_scores.size
    total = p + q
    used = total > 0
    return float(0.5 * np.sum((p[used] - q[used]) ** 2 / total[used]))


def finite_1d(values, name):
    """values as a flat float64 array; none, or any NaN or infinity, is a UserError naming them."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise UserError(f"no {name} to plot")
    if not np.isfinite(values).all():
        raise UserError(f"{name} contain NaN or infinite values; the model diverged or its checkpoint is corrupt")
    return values


def _check_labels_and_scores(labels, scores, what):
    if labels.size != scores.size:
        raise UserError(f"{labels.size} {what} labels but {scores.size} {what} scores; they must match")
    if labels.size == 0:
        raise UserError(f"no {what} scores to evaluate")
    if not np.isin(labels, (0, 1)).all():
        raise UserError(f"{what} labels must be 0 (normal) or 1 (abnormal), got {sorted(set(labels.tolist()))}")
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise UserError(f"{bad} of {scores.size} {what} scores are NaN or infinite; the model diverged or its "
                        "checkpoint is corrupt, so retrain or check the checkpoint")
    if np.unique(labels).size < 2:
        only = "abnormal" if labels[0] == 1 else "normal"
        raise UserError(f"every {what} label is {only}; AUC and AP need both normal (0) and abnormal (1) samples")
