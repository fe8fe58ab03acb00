"""Figures: the grid's row selection, and every function writing a real PNG."""
import matplotlib
import numpy as np
import pytest
from PIL import Image

from utils.errors import UserError
from utils.report import figures, overlay
from utils.report.figures import anomaly_grid, roc_pr_curves, score_histograms, select_extremes
from utils.report.overlay import overlay_array, write_overlay
from utils.report.metrics import chi_square_distance


def _png_size(path):
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def _scores_and_labels(n=40, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    scores = {name: rng.normal(size=n) + shift * labels for name, shift in [("rec", 0.5), ("unc", 1), ("dsu", 2)]}
    return scores, labels


def test_select_extremes_picks_highest_then_lowest():
    scores = np.array([0.5, 9.0, 0.1, 3.0, 7.0, 0.2, 5.0, 0.0])
    assert select_extremes(scores, 2).tolist() == [1, 4, 2, 7]
    assert select_extremes(scores, 3).tolist() == [1, 4, 6, 5, 2, 7]
    # With 2n or more rows than images, every image is shown once, highest first.
    assert select_extremes(scores[:3], 2).tolist() == [1, 0, 2]


def test_score_histograms_writes_png_and_returns_distances(tmp_path):
    scores, labels = _scores_and_labels()
    path = tmp_path / "figs" / "hist.png"
    distances = score_histograms(scores, labels, path)
    assert list(distances) == ["rec", "unc", "dsu"]
    for name, values in scores.items():
        assert distances[name] == pytest.approx(chi_square_distance(values[labels == 0], values[labels == 1]))
    width, height = _png_size(path)
    assert width / height == pytest.approx(3 * 4 / 3.2, rel=0.02)


def test_roc_pr_curves_writes_png(tmp_path):
    scores, labels = _scores_and_labels()
    path = tmp_path / "curves.png"
    roc_pr_curves(scores, labels, path)
    width, height = _png_size(path)
    assert width / height == pytest.approx(9 / 4, rel=0.02)


def test_anomaly_grid_writes_png_with_one_row_per_selected_image(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(10, 16, 16))
    recon = np.clip(images + rng.normal(0, 0.1, size=images.shape), -1, 1)
    maps = {"unc map": rng.random((10, 16, 16)), "dsu map": rng.random((10, 1, 16, 16))}
    image_scores = maps["dsu map"].mean(axis=(1, 2, 3))
    labels = (image_scores > np.median(image_scores)).astype(int)
    masks = np.zeros((10, 16, 16), dtype=bool)
    masks[labels == 1, 4:9, 5:11] = True
    path = tmp_path / "grid.png"
    shown = anomaly_grid(images, recon, maps, image_scores, labels, path, n=3, masks=masks)
    assert shown.tolist() == select_extremes(image_scores, 3).tolist()
    width, height = _png_size(path)
    assert width / height == pytest.approx((2.2 * 4 + 0.6) / (2.2 * 6 + 0.6), rel=0.02)  # + colour bars below
    with pytest.raises(UserError, match="must match"):
        anomaly_grid(images, recon[:5], maps, image_scores, labels, tmp_path / "bad.png")


def test_overlay_array_colours_the_map_on_one_scale():
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, size=(32, 32))
    anomaly_map = rng.random((1, 32, 32))
    anomaly_map[0, 0, :3] = [0.0, 2.0, 4.0]  # zero, the scale's top, beyond it
    pixels = overlay_array(image, anomaly_map, vmax=2.0)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    grey = np.round(255 * (image[0, 0] + 1) / 2)
    assert pixels[0, 0].tolist() == [grey] * 3  # zero keeps the grey
    top = np.round(255 * np.asarray(matplotlib.colormaps[overlay.OVERLAY_CMAP](1.0)[:3]))
    assert pixels[0, 1].tolist() == pixels[0, 2].tolist() == top.tolist()  # vmax and above: the top colour
    half = 0.5 * (image[1, 1] + 1) / 2 + 0.5 * np.asarray(matplotlib.colormaps[overlay.OVERLAY_CMAP](0.5)[:3])
    anomaly_map[0, 1, 1] = 1.0
    assert np.abs(overlay_array(image, anomaly_map, vmax=2.0)[1, 1] - 255 * half).max() <= 0.5  # half way: half
    with pytest.raises(UserError, match="same size"):
        overlay_array(np.zeros((32, 32)), np.zeros((16, 16)), vmax=1.0)


def test_write_overlay_enlarges_to_a_whole_factor(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    write_overlay(pixels, tmp_path / "a" / "overlay.png", note="rec map, 0 to 1")
    assert _png_size(tmp_path / "a" / "overlay.png") == (64 * 6, 48 * 6)  # the short side 48 -> 288 >= 256
    with Image.open(tmp_path / "a" / "overlay.png") as image:
        assert image.text["Description"] == "rec map, 0 to 1"
        assert np.array_equal(np.asarray(image)[::6, ::6], pixels)  # every pixel a sharp block


def test_figures_are_closed(tmp_path):
    scores, labels = _scores_and_labels()
    before = len(figures.plt.get_fignums())
    score_histograms(scores, labels, tmp_path / "a.png")
    roc_pr_curves(scores, labels, tmp_path / "b.png")
    assert len(figures.plt.get_fignums()) == before


@pytest.mark.parametrize("low, spread", [(3e-4, 1e-6), (2e-5, 6e-5), (1e-5, 1e-3), (0.2, 0.5), (1234.0, 0.01)])
def test_histogram_tick_labels_never_overlap(tmp_path, monkeypatch, low, spread):
    """dsu scores sit near 1e-5 and may span a sliver of that: the tick labels must still be separate."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    scores = {"rec": rng.random(200), "dsu": low + spread * rng.random(200)}
    boxes = []

    def measure(fig, path):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            shown = [label for label in ax.get_xticklabels() if label.get_visible() and label.get_text()]
            assert len(shown) >= 2
            boxes.append(sorted((label.get_window_extent(renderer) for label in shown), key=lambda box: box.x0))

    monkeypatch.setattr(figures, "_save", measure)
    score_histograms(scores, labels, tmp_path / "hist.png")
    assert len(boxes) == 2
    for axis_boxes in boxes:
        for left, right in zip(axis_boxes, axis_boxes[1:]):
            assert left.x1 < right.x0, (left, right)
