"""Figures for anomaly scores: score histograms, ROC / PR curves, a grid of maps and a single-image overlay.

Every function writes one PNG (creating its folder) and closes its figure, so it is safe in long loops. The overlay
draws no figure: it colours the arrays directly (overlay_array), for predict.py's many images.
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator, ScalarFormatter  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from utils.errors import UserError  # noqa: E402
from utils.report.metrics import chi_square_distance, finite_1d, image_metrics  # noqa: E402

DPI = 100
NORMAL_COLOR, ABNORMAL_COLOR = "tab:blue", "tab:red"


def score_histograms(scores: dict, labels, path, bins=50) -> dict:
    """One subplot per score with normal and abnormal histograms; returns the chi-square distance per score."""
    labels = np.asarray(labels).ravel()
    distances = {}
    fig, axes = plt.subplots(1, len(scores), figsize=(4 * len(scores), 3.2), squeeze=False,
                             layout="constrained")
    try:
        for ax, (name, values) in zip(axes[0], scores.items()):
            values = finite_1d(values, f"{name} scores")
            auc = image_metrics(labels, values)["auc"]  # first: it checks labels and scores match
            normal, abnormal = values[labels == 0], values[labels == 1]
            distances[name] = chi_square_distance(normal, abnormal, bins=bins)
            edges = np.histogram_bin_edges(values, bins=bins)
            ax.hist(normal, bins=edges, density=True, alpha=0.6, color=NORMAL_COLOR, label="normal")
            ax.hist(abnormal, bins=edges, density=True, alpha=0.6, color=ABNORMAL_COLOR, label="abnormal")
            ax.set_title(f"{name}   AUC {auc:.3f}   \u03c7\u00b2 {distances[name]:.3f}")
            ax.set_xlabel("image score")
            _compact_ticks(ax.xaxis)
            ax.legend(fontsize="small")
        axes[0, 0].set_ylabel("density")
        _save(fig, path)
    finally:
        plt.close(fig)
    return distances


def roc_pr_curves(scores: dict, labels, path):
    """ROC curves (left) and precision-recall curves (right), one line per score, AUC / AP in the legends."""
    labels = np.asarray(labels).ravel()
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(9, 4), layout="constrained")
    try:
        for name, values in scores.items():
            values = finite_1d(values, f"{name} scores")
            metrics = image_metrics(labels, values)
            false_pos, true_pos, _ = roc_curve(labels, values)
            precision, recall, _ = precision_recall_curve(labels, values)
            roc_ax.plot(false_pos, true_pos, label=f"{name} (AUC {metrics['auc']:.3f})")
            pr_ax.step(recall, precision, where="post", label=f"{name} (AP {metrics['ap']:.3f})")
        roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        pr_ax.axhline(labels.mean(), color="grey", linestyle=":", linewidth=1)  # a random scorer's precision
        roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
        pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(0, 1), ylim=(0, 1.02))
        roc_ax.legend(loc="lower right", fontsize="small")
        pr_ax.legend(loc="lower left", fontsize="small")
        _save(fig, path)
    finally:
        plt.close(fig)


def select_extremes(image_scores, n) -> np.ndarray:
    """Indices of the n highest then the n lowest scores, all ordered from highest to lowest score.

    With 2n or fewer images every image is returned, highest first. Ties keep the original order.
    """
    image_scores = np.asarray(image_scores, dtype=np.float64).ravel()
    order = np.argsort(-image_scores, kind="stable")
    if order.size <= 2 * n:
        return order
    return np.concatenate([order[:n], order[-n:]])


def anomaly_grid(images, recon, maps: dict, image_scores, labels, path, n=4, score_name="dsu", masks=None):
    """Grid of the n most and n least anomalous images (by image_scores), one row each.

    Columns: image (with the mask contour when masks are given) | ensemble reconstruction | one column per map.
    images and recon are (N, H, W) in [-1, 1]; each map is (N, H, W). Each map column shares one colour scale
    (1st to 99th percentile of the shown rows) with one colorbar, so rows can be compared by colour.
    Returns the indices of the rows shown.
    """
    images, recon = _stack(images, "images"), _stack(recon, "reconstructions")
    maps = {name: _stack(values, name) for name, values in maps.items()}
    image_scores = np.asarray(image_scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    for name, array in [("reconstructions", recon), ("image scores", image_scores), ("labels", labels),
                        *maps.items()]:
        if len(array) != len(images):
            raise UserError(f"{len(images)} images but {len(array)} {name}; they must match")
    if masks is not None:
        masks = _stack(masks, "masks") > 0

    shown = select_extremes(image_scores, n)
    columns = ["image", "ensemble reconstruction", *maps]
    fig, axes = plt.subplots(len(shown), len(columns), figsize=(2.2 * len(columns) + 0.6, 2.2 * len(shown) + 0.6),
                             squeeze=False, layout="constrained")
    try:
        for row, index in enumerate(shown):
            _show_gray(axes[row, 0], images[index])
            if masks is not None and masks[index].any():
                axes[row, 0].contour(masks[index], levels=[0.5], colors="lime", linewidths=0.8)
            _show_gray(axes[row, 1], recon[index])
            kind = "abnormal" if labels[index] == 1 else "normal"
            axes[row, 0].set_ylabel(f"{kind}\n{score_name} {image_scores[index]:.3g}", fontsize="small")
        for column, values in enumerate(maps.values(), start=2):
            low, high = np.percentile(values[shown], [1, 99])
            high = max(high, low + 1e-12)  # a constant map still needs a valid colour range
            for row, index in enumerate(shown):
                heat = axes[row, column].imshow(values[index], cmap="jet", vmin=low, vmax=high)
                _hide_ticks(axes[row, column])
            bar = fig.colorbar(heat, ax=axes[:, column], location="bottom", shrink=0.9, aspect=15, format="%.2g")
            bar.ax.locator_params(nbins=3)
        for column, name in enumerate(columns):
            axes[0, column].set_title(name, fontsize="small")
        _save(fig, path)
    finally:
        plt.close(fig)
    return shown


def _show_gray(ax, image):
    ax.imshow(image, cmap="gray", vmin=-1, vmax=1)
    _hide_ticks(ax)


def _hide_ticks(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def _stack(array, name):
    """(N, H, W) or (N, 1, H, W) -> (N, H, W)."""
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise UserError(f"{name} must be shaped (N, H, W) or (N, 1, H, W), got {array.shape}")
    return array


def ensemble_size_curve(curve: dict, path):
    """Image AUC of each score, and its maps' pixel AUROC when there is one, against the number of learners k
    (curve: eval.size_curve's {k: {score: metrics}})."""
    sizes = sorted(curve, key=int)
    scores = list(curve[sizes[0]])
    panels = [("auc", "image AUC")] + ([("pixel_auroc", "pixel AUROC")]
                                      if "pixel_auroc" in curve[sizes[0]][scores[0]] else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), layout="constrained", squeeze=False)
    try:
        for ax, (metric, title) in zip(axes[0], panels):
            for score in scores:
                ax.plot([int(k) for k in sizes], [curve[k][score][metric] for k in sizes], marker="o", label=score)
            ax.set(xlabel="learners k (the first k of the run)", title=title)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0][0].legend(fontsize="small")
        _save(fig, path)
    finally:
        plt.close(fig)


def similarity_heatmap(matrix, path, title="similarity between learners"):
    """A K x K similarity matrix (values in [0, 1]) as a heat map with each value written in its cell."""
    matrix = np.asarray(matrix, dtype=np.float64)
    size = len(matrix)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * size, 0.9 + 0.9 * size), layout="constrained")
    try:
        shown = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
        ticks = range(size)
        ax.set(xticks=ticks, yticks=ticks, xlabel="learner", ylabel="learner")
        ax.set_title(title, fontsize="small")
        fig.colorbar(shown, ax=ax, shrink=0.8)
        _save(fig, path)
    finally:
        plt.close(fig)


def _compact_ticks(axis):
    """Few tick labels, each short: scores such as dsu sit near 1e-5 and often span a sliver of their own size, where
    matplotlib's default labels (0.0003000, 0.0003002, ...) run into each other. Scientific notation below 1e-3
    and an offset as soon as it saves two digits keep every label to a few characters."""
    with matplotlib.rc_context({"axes.formatter.offset_threshold": 2}):
        formatter = ScalarFormatter(useMathText=True)
    formatter.set_powerlimits((-3, 4))
    axis.set_major_formatter(formatter)
    axis.set_major_locator(MaxNLocator(nbins=5))


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
