"""Score the test set with a trained D2UE ensemble: rec, unc and dsu, with image- and (where masks exist) pixel-level
metrics.

    python eval.py --config cfgs/RSNA_AE.yaml [Section.key=value ...]
    python eval.py --summary runs        # mean ± std over seeds of every results.json under runs/

The K learners are rebuilt from their checkpoints alone. Writes <run>/results.json and <run>/scores.csv, prints a
table, then draws hist.png, roc_pr.png and grid.png and logs metrics, hyper-parameters and a fixed set of test
images to TensorBoard (<run>/tb).
"""
import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

import models
from datasets.benchmark import describe
from datasets.medad import dataset_dir, load_images, load_masks, read_split, to_model_input
from utils import checkpoint
from utils.errors import UserError, cli
from utils.figures import anomaly_grid, chi_square_distance, roc_pr_curves, score_histograms
from utils.metrics import image_metrics, pixel_metrics
from utils.runtime import RunLog, setup
from utils.scores import SCORES, image_scores, score_maps
from utils.summary import write_summary

SHOWN_PER_CLASS = 4  # TensorBoard shows the first 4 normal and first 4 abnormal test images: the same in every run


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--config", help="evaluate the run trained with this YAML file")
    mode.add_argument("--summary", metavar="OUT_ROOT",
                      help="summarise every results.json under OUT_ROOT over seeds (writes summary.md, summary.csv)")
    parser.add_argument("overrides", nargs="*", help="Section.key=value, as given to train.py (with --config)")
    args = parser.parse_args(argv)
    if args.summary and args.overrides:
        parser.error("overrides go with --config, not with --summary")
    return args


def load_learners(run_dir, cfg, device):
    """Rebuild every learner from its checkpoint, frozen and in eval mode; refuse unfinished or foreign ones."""
    learners = []
    for index in range(cfg.Model.num_learners):
        path = checkpoint.learner_path(run_dir, index)
        state = checkpoint.load(path)
        checkpoint.check_same_experiment(state["config"], cfg.to_dict(), f"checkpoint {path}")
        if state["epoch"] < cfg.Solver.num_epoch:
            raise UserError(f"learner {index} in {run_dir} has {state['epoch']} of {cfg.Solver.num_epoch} epochs; "
                            "rerun train.py with the same config to finish it")
        learner = models.build(state["backbone"])
        learner.load_state_dict(state["model"])
        learners.append(models.place(learner, device).eval().requires_grad_(False))
    return learners


def score_dataset(learners, images_u8, batch_size, device):
    """Pixel maps (float32, on the CPU) and image scores of every image, in batches.

    batch_size 0 picks the largest batch that fits: it starts high and halves on an out-of-memory error.
    """
    batch_size = batch_size or (1024 if device.type == "cuda" else 128)
    while True:
        try:
            maps = {name: [] for name in (*SCORES, "x_hat")}
            for start in range(0, len(images_u8), batch_size):
                x = to_model_input(images_u8[start:start + batch_size].to(device))
                for name, value in score_maps(learners, x).items():
                    maps[name].append(value.cpu())
            maps = {name: torch.cat(parts) for name, parts in maps.items()}
            return maps, image_scores(maps)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            torch.cuda.empty_cache()


def metrics_table(labels, scores, maps, masks) -> dict:
    """Per score: image AUC and AP, the chi-square distance between the normal and abnormal score histograms, and,
    given masks, pixel AUROC, AP and best Dice (normal images have no mask file and count as all-zero masks)."""
    results = {}
    for name in SCORES:
        results[name] = image_metrics(labels, scores[name])
        results[name]["chi2"] = chi_square_distance(scores[name][labels == 0], scores[name][labels == 1])
        if masks is not None:
            results[name].update(pixel_metrics(masks.numpy(), maps[name].numpy()))
    return results


def write_json(obj, path):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def write_scores_csv(path, files, labels, scores):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", *SCORES])
        for row, (name, label) in enumerate(zip(files, labels)):
            writer.writerow([name, label, *(f"{scores[s][row]:.8g}" for s in SCORES)])


def format_table(results) -> str:
    widths = {key: max(9, len(key)) for key in results[SCORES[0]]}
    lines = ["score  " + "  ".join(f"{key:>{width}}" for key, width in widths.items())]
    for name in SCORES:
        lines.append(f"{name:<5}  " + "  ".join(f"{results[name][key]:>{width}.4f}" for key, width in widths.items()))
    return "\n".join(lines)


def write_figures(run_dir, images_u8, maps, scores, labels, masks):
    """hist.png, roc_pr.png, and grid.png: the highest and lowest dsu-scored images with their maps."""
    score_histograms(scores, labels, run_dir / "hist.png")
    roc_pr_curves(scores, labels, run_dir / "roc_pr.png")
    anomaly_grid(to_model_input(images_u8)[:, 0], maps["x_hat"],
                 {name: maps[name] for name in ("unc", "dsu")}, scores["dsu"], labels,
                 run_dir / "grid.png", score_name="dsu", masks=masks)


def hyperparameters(cfg) -> dict:
    """Every Model, Data and Solver setting under its bare name (no name appears in two sections)."""
    raw = cfg.to_dict()
    return {key: value for section in ("Model", "Data", "Solver") for key, value in raw[section].items()}


def log_metrics(log, cfg, results, step):
    """Metrics as scalars eval/<score>_<metric>, and the run's hyper-parameters for the HParams dashboard."""
    from torch.utils.tensorboard.summary import hparams
    metrics = {f"{name}_{key}": value for name in SCORES for key, value in results[name].items()}
    log.scalars("eval", metrics, step)
    # add_hparams would write the metrics again, into a sub-run; write only its summaries, beside the scalars.
    for summary in hparams(hyperparameters(cfg), {f"eval/{key}": value for key, value in metrics.items()}):
        log.tensorboard.file_writer.add_summary(summary, step)


def log_images(writer, images_u8, maps, labels, masks, step):
    """A fixed set of test images with the ensemble reconstruction and each score's map (scaled to [0, 1] over
    the images shown), so that runs can be compared image by image."""
    shown = np.concatenate([np.flatnonzero(labels == 0)[:SHOWN_PER_CLASS],
                            np.flatnonzero(labels == 1)[:SHOWN_PER_CLASS]])
    writer.add_images("test_images/input", images_u8[shown], step)
    writer.add_images("test_images/reconstruction", ((maps["x_hat"][shown] + 1) / 2).clamp(0, 1), step)
    if masks is not None:
        writer.add_images("test_images/mask", masks[shown].float(), step)
    for name in SCORES:
        values = maps[name][shown]
        writer.add_images(f"test_images/{name}_map",
                          (values - values.min()) / (values.max() - values.min()).clamp_min(1e-12), step)


@cli
def main(argv=None):
    args = parse_args(argv)
    if args.summary:
        md_path, csv_path = write_summary(args.summary)
        print(md_path.read_text(), end="")
        print(f"wrote {md_path} and {csv_path}", file=sys.stderr)
        return
    cfg, device = setup(args.config, args.overrides)
    run_dir = cfg.run_dir
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} not found; train first: python train.py --config {args.config}")
    learners = load_learners(run_dir, cfg, device)
    split = read_split(dataset_dir(cfg.Data.root, cfg.Data.dataset))
    log = RunLog(run_dir, "eval")
    images = load_images(split.directory, split.test, cfg.Data.img_size, cfg.Exp.workers or None)
    labels = np.asarray(split.test_labels)
    maps, scores = score_dataset(learners, images, cfg.Exp.score_batch, device)
    scores = {name: value.numpy().astype(np.float64) for name, value in scores.items()}
    masks = None
    if split.has_masks:  # a data set without a masks/ folder simply gets no pixel metrics
        masks = load_masks(split.directory, split.test, cfg.Data.img_size, cfg.Exp.workers or None)
    results = metrics_table(labels, scores, maps, masks)
    results["run"] = {"dataset": cfg.Data.dataset, "network": cfg.Model.network, "seed": cfg.Solver.seed,
                      "num_learners": cfg.Model.num_learners, "img_size": cfg.Data.img_size,
                      "num_epoch": cfg.Solver.num_epoch, "lr": cfg.Solver.lr, "Lambda": cfg.Solver.Lambda,
                      "layer": cfg.Model.layer, "split": describe(split.lists).label, "out_dir": str(run_dir)}
    write_json(results, run_dir / "results.json")
    write_scores_csv(run_dir / "scores.csv", split.test, labels, scores)
    log.info(f"{len(labels)} test images ({int(labels.sum())} abnormal); wrote {run_dir / 'results.json'}")
    print(format_table(results))
    write_figures(run_dir, images, maps, scores, labels, masks)
    log_metrics(log, cfg, results, step=cfg.Solver.num_epoch)
    log_images(log.tensorboard, images, maps, labels, masks, step=cfg.Solver.num_epoch)
    log.info(f"figures hist.png, roc_pr.png, grid.png in {run_dir}; tensorboard --logdir {run_dir / 'tb'}")
    log.close()


if __name__ == "__main__":
    main()
