"""The figures the docs show, drawn from a trained run by the project's own code:

    python scripts/dev/readme_figures.py --run runs/demo_AE --out images      (or ./scripts/dev/figures.sh [RUN_DIR])

overview.png          the method: RAR training of learner 0 and the juniors 1 .. K-1, then rec / unc / dsu scoring
predict_overlays.png  what predict.py writes for the run's test images at --fpr (default 0.05): a few of its overlays,
                      flagged and not, each with its score and p-value from predict's predictions.csv; the run
                      needs a held-out reference (Data.holdout), as the demo's has
"""
import argparse
import contextlib
import csv
import io
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

import predict  # noqa: E402
from datasets.medad import dataset_dir, read_split  # noqa: E402
from utils.errors import ArgumentParser, cli  # noqa: E402
from utils.run.checkpoint import load_run  # noqa: E402
from utils.run.runtime import pick_device  # noqa: E402

DPI = 150
FPR = 0.05  # the README's predict.py example
SCORE = "rec"  # predict.py's default --score
SHOWN_PER_KIND = 2  # overlays per label in each row (flagged, not flagged): a handful in all
LEARNER_COLOR, SENIOR_COLOR, SCORE_COLOR, DSU_COLOR = "#dbe9f6", "#e6e6e6", "#eef5e9", "#fde2c8"
REPEL_COLOR, EDGE_COLOR = "#c0392b", "#444444"


# ---------------------------------------------------------------- overview diagram

def _box(ax, center, size, text, color, fontsize=10, weight="normal"):
    (x, y), (w, h) = center, size
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                facecolor=color, edgecolor=EDGE_COLOR, linewidth=1.1))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, weight=weight, linespacing=1.5)


def _arrow(ax, start, end, color=EDGE_COLOR, style="-|>", curve=0.0, label=None, label_offset=(0, 0.14),
           fontsize=8.5, linestyle="-"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=13, color=color, linewidth=1.2,
                                 linestyle=linestyle, connectionstyle=f"arc3,rad={curve}", shrinkA=2, shrinkB=2))
    if label:
        middle = ((start[0] + end[0]) / 2 + label_offset[0], (start[1] + end[1]) / 2 + label_offset[1])
        ax.text(*middle, label, ha="center", va="bottom", fontsize=fontsize, color=color)


def overview_diagram(path, num_learners=3):
    """Boxes and arrows: the learners trained one after another with repulsion, then the three scores."""
    fig = plt.figure(figsize=(12, 6.6))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set(xlim=(0, 12), ylim=(-0.3, 6.35))
    ax.axis("off")
    # Counted from 0, as learner_0.pt and the logs: K > 3 is drawn as learners 0, 1 and K-1.
    ks = ["0", "1", "K-1" if num_learners > 3 else "2"][:min(num_learners, 3)]

    # Training: learners one after another, each junior repelled (linear CKA) from its frozen seniors.
    ax.text(0.2, 6.2, "Training: Redundancy-Aware Repulsion (RAR), on normal images only", fontsize=13,
            weight="bold", va="top")
    _box(ax, (1.05, 4.45), (1.5, 0.95), "normal\ntraining\nimages $x$", "white")
    xs, last = [3.55, 6.75, 9.95][:len(ks)], ks[-1]
    losses = [r"$\mathcal{L}_{rec}(\hat{x}_0, x)$",
              r"$\mathcal{L}_{rec} + \Lambda\,\mathrm{CKA}(f_1, f_0)$",
              rf"$\mathcal{{L}}_{{rec}} + \Lambda\,\mathrm{{mean}}_{{j<{last}}}\,\mathrm{{CKA}}(f_{{{last}}}, f_j)$"]
    for index, (x, k) in enumerate(zip(xs, ks)):
        role = "learner 0: no repulsion" if index == 0 else f"junior learner {k}"
        _box(ax, (x, 4.6), (2.55, 0.95), f"{role}\n{losses[index]}", LEARNER_COLOR, fontsize=10)
        _arrow(ax, (x, 3.75), (x, 4.12))  # the same training images feed every learner
    ax.plot([1.8, xs[-1]], [3.75, 3.75], color=EDGE_COLOR, linewidth=1.2)
    ax.plot([1.05, 1.05], [3.97, 3.75], color=EDGE_COLOR, linewidth=1.2)
    ax.plot([1.05, 1.8], [3.75, 3.75], color=EDGE_COLOR, linewidth=1.2)
    for left, right in zip(xs, xs[1:]):
        _arrow(ax, (left + 1.28, 4.6), (right - 1.28, 4.6))
        ax.text((left + right) / 2, 4.42, "then\nfrozen", ha="center", va="top", fontsize=8, color="#555555")
    for junior in range(1, len(xs)):  # one arc from each junior to every senior
        for senior in range(junior):
            far = junior - senior > 1
            start, end = (xs[junior] - (0.15 if far else 0.55), 5.1), (xs[senior] + (0.15 if far else 0.55), 5.1)
            ax.add_patch(FancyArrowPatch(start, end, arrowstyle="<|-|>", mutation_scale=11, color=REPEL_COLOR,
                                         linewidth=1.2, connectionstyle=f"arc3,rad={0.2 if far else 0.3}"))
    ax.text(xs[-1] + 1.3, 5.55, "repulsion: the junior's loss adds\n"
            r"$\Lambda\,\times$ mean linear CKA to its seniors", ha="right", va="bottom", fontsize=9.5,
            color=REPEL_COLOR)
    ax.text(0.2, 3.45, r"$f$ = a learner's tapped features (Model.layer; default the latent $z$), flattened per image."
            "  Seniors are frozen and in eval mode; their features are detached.\n"
            "Linear CKA ignores rotations and isotropic rescaling, so a junior cannot look different by merely "
            "rotating or rescaling a senior's features.", fontsize=9, va="top", color="#333333", linespacing=1.6)
    ax.plot([0.2, 11.8], [2.75, 2.75], color="#bbbbbb", linewidth=0.8)

    # Inference: K learners, three pixel maps, image score = map mean.
    ax.text(0.2, 2.6, "Inference: Dual-Space Uncertainty (DSU), on any image", fontsize=13, weight="bold",
            va="top")
    _box(ax, (1.05, 1.0), (1.5, 0.7), "test image $x$", "white")
    for offset in (0.14, 0.07, 0.0):  # a small stack: the K frozen learners
        _box(ax, (3.55 + offset, 1.0 + offset), (2.0, 0.9), "", SENIOR_COLOR if offset else LEARNER_COLOR)
    ax.text(3.55, 1.0, f"{'K' if num_learners > 3 else num_learners} learners\n(eval mode)",
            ha="center", va="center", fontsize=10)
    _arrow(ax, (1.8, 1.0), (2.55, 1.0))
    scores = [(1.8, "rec: ensemble reconstruction error\n" r"$(x - \mathrm{mean}_k\,\hat{x}_k)^2$", SCORE_COLOR),
              (1.0, "unc: output-space uncertainty\n" r"$\mathrm{std}_k(\hat{x}_k)$", SCORE_COLOR),
              (0.2, "dsu: input-space uncertainty (D2UE's score)\n"
               r"$\mathrm{std}_k\,(e_k \odot \partial\,\mathrm{mean}(e_k) / \partial x),\ \ e_k = |\hat{x}_k - x|$",
               DSU_COLOR)]
    for y, text, color in scores:
        _box(ax, (7.2, y), (4.2, 0.66), text, color, fontsize=9.5)
        _arrow(ax, (4.62, 1.0), (5.08, y))
        _arrow(ax, (9.32, y), (10.08, 1.0))
    _box(ax, (10.95, 1.0), (1.6, 1.05), "pixel maps\n\u2193\nimage score\n= map mean", "white", fontsize=9.5)
    _save(fig, path)


# ---------------------------------------------------------------- predict.py's overlays

def shown_rows(flagged, labels, per_kind=SHOWN_PER_KIND) -> list[list[int]]:
    """Two rows of image indices, flagged then not: the first per_kind abnormal, then normal, images of each, in
    test order (fewer where there are fewer)."""
    flagged, labels = np.asarray(flagged, dtype=bool), np.asarray(labels)
    return [[int(i) for label in (1, 0) for i in np.flatnonzero((flagged == outcome) & (labels == label))[:per_kind]]
            for outcome in (True, False)]


def predict_overlays(run, split, path, fpr=FPR, device="auto") -> list[dict]:
    """Run predict.py on the run's test images at --fpr with every overlay, then compose the overlays of
    shown_rows; each titled with its row of predict's predictions.csv. Returns the rows shown, flagged first."""
    files = [split.directory / "images" / name for name in split.test]
    with tempfile.TemporaryDirectory() as folder:
        with contextlib.redirect_stdout(io.StringIO()):  # its table names a folder that is gone once drawn
            predict.main(["--run", str(run), *map(str, files), "--out", folder, "--fpr", str(fpr),
                          "--score", SCORE, "--overlays", "all", "--device", device])
        with open(Path(folder) / "predictions.csv", newline="") as table:
            predictions = list(csv.DictReader(table))  # one row per file, in the order given
        names = predict.overlay_names(files, predict.map_of(SCORE))
        rows = shown_rows([row["flagged"] == "1" for row in predictions], split.test_labels)
        overlays = {}
        for i in sum(rows, []):
            with Image.open(Path(folder) / "overlays" / names[i]) as image:
                overlays[i], scale = np.asarray(image.convert("RGB")), image.text.get("Description", "")

    columns = max(map(len, rows))
    fig, axes = plt.subplots(2, columns, figsize=(2.1 * columns, 5.1), squeeze=False, layout="constrained")
    try:
        for axes_row, chosen, outcome in zip(axes, rows, (f"flagged (p \u2264 {fpr})", "not flagged")):
            axes_row[0].set_ylabel(outcome, fontsize=10)
            for ax, i in zip(axes_row, chosen + [None] * columns):
                ax.set(xticks=[], yticks=[])
                if i is None:  # a frameless blank keeps the row's label where no image had this outcome
                    ax.set_frame_on(False)
                    continue
                row = predictions[i]
                ax.imshow(overlays[i])
                ax.set_title(f"{Path(row['file']).name}\n{SCORE} {float(row[SCORE]):.4g}   "  # as predict prints
                             f"p {float(row['p_' + SCORE]):.4f}", fontsize=7.5)
        flagged = sum(row["flagged"] == "1" for row in predictions)
        fig.suptitle(f"predict.py --fpr {fpr}: {flagged} of {len(predictions)} test images flagged on {SCORE}",
                     fontsize=10)
        fig.supxlabel(f"colour: the {scale}", fontsize=7.5)
        _save(fig, path, dpi=100, palette=True)
    finally:
        plt.close(fig)
    return [predictions[i] for i in sum(rows, [])]


# ---------------------------------------------------------------- the command

def _save(fig, path, dpi=DPI, palette=False):
    """palette: 256 colours, a third of the bytes of a photo-like figure, no difference to see at its size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
        Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)\
            .save(path, optimize=True)
    else:
        fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder written by train.py")
    parser.add_argument("--out", default="images", help="folder for the PNGs (default: images)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--fpr", type=float, default=FPR, help=f"predict.py's --fpr for the overlays (default {FPR})")
    return parser.parse_args(argv)


@cli
def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    cfg, learners = load_run(args.run, device)
    out = Path(args.out)
    split = read_split(dataset_dir(cfg.Data.root, cfg.Data.dataset))
    shown = predict_overlays(args.run, split, out / "predict_overlays.png", args.fpr, args.device)
    overview_diagram(out / "overview.png", len(learners))
    print(f"wrote {out / 'overview.png'}, {out / 'predict_overlays.png'} (predict.py's overlays of "
          f"{', '.join(Path(row['file']).name for row in shown)})")


if __name__ == "__main__":
    main()
