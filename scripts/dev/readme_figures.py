"""The README's figures, drawn from a trained run by the project's own code:

    python scripts/dev/readme_figures.py --run runs/demo_AE --out images      (or ./scripts/dev/figures.sh [RUN_DIR])

overview.png   the method: RAR training of the K learners, then rec / unc / dsu scoring
rar_tsne.png   t-SNE of every learner's tapped features on the run's test images, and their pairwise linear CKA
maps.png       anomaly maps of the most and least anomalous test images (utils.report.figures.anomaly_grid)
"""
import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from datasets.medad import dataset_dir, load_images, load_masks, read_split  # noqa: E402
from models import to_model_input  # noqa: E402
from models import TAPS  # noqa: E402
from utils.errors import cli  # noqa: E402
from utils.method.dsu import SCORES, image_scores, score_dataset  # noqa: E402
from utils.method.rar import features_of, pairwise_cka  # noqa: E402
from utils.report.figures import anomaly_grid  # noqa: E402
from utils.run.checkpoint import load_run  # noqa: E402
from utils.run.runtime import pick_device  # noqa: E402

DPI = 150
SEED = 0
TSNE_PER_CLASS = 300  # test images per class in the embedding (CKA uses them all); more only crowds the plot
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


# ---------------------------------------------------------------- RAR: t-SNE of the learners' features

def tsne_subset(labels, per_class=TSNE_PER_CLASS, seed=SEED) -> np.ndarray:
    """Indices of at most per_class images of each label, seeded, sorted."""
    generator = np.random.default_rng(seed)
    chosen = [generator.permutation(np.flatnonzero(labels == value))[:per_class] for value in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def rar_tsne(learners, images, labels, path, tap="z", seed=SEED) -> np.ndarray:
    """One t-SNE of all learners' features (colour = learner, marker = label) beside their CKA matrix."""
    features = [features_of(learner, images).flatten(1).float().cpu() for learner in learners]
    cka = pairwise_cka([f.double() for f in features]).numpy()
    subset = tsne_subset(labels, seed=seed)
    points = torch.cat([f[subset] for f in features]).numpy()
    if points.shape[1] > 50:  # wide taps (encoder / decoder blocks): PCA first, the usual t-SNE practice
        points = PCA(min(50, len(points)), random_state=seed).fit_transform(points)  # no more components than points
    perplexity = min(30.0, (len(points) - 1) / 3)
    embedded = TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)\
        .fit_transform(points)

    count, shown_labels = len(learners), labels[subset]
    colors = plt.get_cmap("tab10").colors
    fig, (ax, matrix_ax) = plt.subplots(1, 2, figsize=(12, 5.4), width_ratios=[1.55, 1], layout="constrained")
    try:
        for k in range(count):
            part = embedded[k * len(subset):(k + 1) * len(subset)]
            for value, marker, kind in [(0, "o", "normal"), (1, "^", "abnormal")]:
                chosen = part[shown_labels == value]
                ax.scatter(chosen[:, 0], chosen[:, 1], s=14, marker=marker, color=colors[k], alpha=0.65,
                           linewidths=0, label=f"learner {k}, {kind}")
        ax.set(xticks=[], yticks=[], xlabel="t-SNE 1", ylabel="t-SNE 2")
        ax.set_title(f"t-SNE of the {count} learners' '{tap}' features on {len(subset)} test images "
                     "(one embedding)", fontsize=11)
        ax.legend(fontsize=8, ncols=count, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False,
                  markerscale=1.4)

        heat = matrix_ax.imshow(cka, cmap="Reds", vmin=0, vmax=1)
        for i in range(count):
            for j in range(count):
                matrix_ax.text(j, i, f"{cka[i, j]:.2f}", ha="center", va="center", fontsize=11,
                               color="white" if cka[i, j] > 0.6 else "black")
        ticks = [f"learner {k}" for k in range(count)]
        matrix_ax.set(xticks=range(count), yticks=range(count), xticklabels=ticks, yticklabels=ticks)
        mean_off = cka[~np.eye(count, dtype=bool)].mean() if count > 1 else 1.0
        matrix_ax.set_title(f"linear CKA on all {len(labels)} test images\n(mean between learners {mean_off:.2f};"
                            " 1 = same features)", fontsize=11)
        fig.colorbar(heat, ax=matrix_ax, shrink=0.8)
        _save(fig, path)
    finally:
        plt.close(fig)
    return cka


# ---------------------------------------------------------------- the command

def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white")
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder written by train.py")
    parser.add_argument("--out", default="images", help="folder for the PNGs (default: images)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return parser.parse_args(argv)


@cli
def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    cfg, learners = load_run(args.run, device)
    out = Path(args.out)
    split = read_split(dataset_dir(cfg.Data.root, cfg.Data.dataset))
    images = load_images(split.directory, split.test, cfg.Data.img_size, cfg.Exp.workers or None)
    labels = np.asarray(split.test_labels)

    overview_diagram(out / "overview.png", cfg.Model.num_learners)
    cka = rar_tsne(learners, to_model_input(images.to(device)), labels, out / "rar_tsne.png",
                   tap=TAPS[cfg.Model.layer])
    pairs = [f"{i}-{j} {cka[i, j]:.3f}" for i in range(len(cka)) for j in range(i + 1, len(cka))]
    print(f"linear CKA between learners on {len(labels)} test images: {', '.join(pairs) or '(one learner)'}")

    maps = score_dataset(learners, images, cfg.Exp.score_batch, device).maps
    scores = image_scores(maps)
    masks = load_masks(split.directory, split.test, cfg.Data.img_size) if split.has_masks else None
    anomaly_grid(to_model_input(images)[:, 0].numpy(), maps["x_hat"].numpy(),
                 {name: maps[name].numpy() for name in SCORES}, scores["dsu"].numpy(), labels,
                 out / "maps.png", masks=None if masks is None else masks.numpy())
    print(f"wrote {out / 'overview.png'}, {out / 'rar_tsne.png'}, {out / 'maps.png'}")


if __name__ == "__main__":
    main()
