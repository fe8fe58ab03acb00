"""Score the test set with a trained D2UE ensemble: rec, unc and dsu, and rec and dsu referred to normal images (the
run's reference, made here once if it is missing or stale), with image- and (where masks exist) pixel-level metrics,
for the whole ensemble and for its first k learners, k = 2..K (the ensemble-size curve).

    python eval.py --config cfgs/RSNA_AE.yaml [Section.key=value ...]
    python eval.py --summary runs        # mean ± std over seeds of every results.json under runs/

The K learners are rebuilt from their checkpoints alone. Writes <run>/results.json and <run>/scores.csv, prints a
table, then draws hist.png, roc_pr.png, grid.png and ensemble_size.png and logs metrics, hyper-parameters and a fixed
set of test images to TensorBoard (<run>/tb). A run folder another command works in is refused; SIGTERM or SIGUSR1
stops evaluation at once (rerunning starts it over).
"""
import argparse
import json
import sys
import time

import numpy as np
from PIL import Image

from datasets.benchmark import describe
from datasets.medad import dataset_dir, load_images, load_masks, read_split, reference_images
from models import to_model_input
from utils.atomic import atomic_write_csv, atomic_write_text
from utils.errors import ArgumentParser, UserError, cli
from utils.grid.summary import write_summary
from utils.method.dsu import SCORES, score_dataset
from utils.method.feature_shape import spectrum
from utils.method.rar import pairwise_cka
from utils.method.reference import IMAGE_SCORES, calibration_counts, discoveries, ensure as ensure_reference, \
    p_values, referred_scores
from utils.report.figures import anomaly_grid, ensemble_size_curve, roc_pr_curves, score_histograms, \
    similarity_heatmap
from utils.report.metrics import chi_square_distance, image_metrics, pixel_metrics_of_maps
from utils.run import checkpoint, config, runlock, stop
from utils.run.runtime import RunLog, existing_run_dir, setup

SHOWN_PER_CLASS = 4  # TensorBoard shows the first 4 normal and first 4 abnormal test images: the same in every run
CURVE_METRICS = ("auc", "ap", "pixel_auroc", "pixel_ap", "pixel_best_dice")  # the curve's, per score and k
LEVEL = 0.05  # fpr05 / tpr05: the shares of normal / abnormal test images whose p-value is at most this
FDR = 0.1  # fdp10 / power10: Benjamini-Hochberg at this false-discovery rate over the test set


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--config", help="evaluate the run trained with this YAML file")
    mode.add_argument("--summary", metavar="OUT_ROOT",
                      help="summarise every results.json under OUT_ROOT over seeds (writes summary.md, summary.csv)")
    parser.add_argument("overrides", nargs="*", help="Section.key=value or a preset file, as given to train.py (with "
                        "--config)")
    args = parser.parse_args(argv)
    if args.summary and args.overrides:
        parser.error("overrides go with --config, not with --summary")
    return args


def decision_metrics(labels, p, count, in_sample) -> dict:
    """What flagging by one score's p-values `p` does on the test set: the shares of normal (fpr05) and abnormal
    (tpr05) images at p <= LEVEL; Benjamini-Hochberg at FDR over the whole test set, the share of its flagged images
    that are normal (fdp10, 0 when it flags none) and of abnormal images it flags (power10); and p_min, 1 / (count +
    1), the smallest p-value `count` calibration images allow. An in-sample reference's shares are too high: their
    names end in _in_sample."""
    suffix = "_in_sample" if in_sample else ""
    found = discoveries(p, FDR)
    return {f"fpr05{suffix}": float(np.mean(p[labels == 0] <= LEVEL)),
            f"tpr05{suffix}": float(np.mean(p[labels == 1] <= LEVEL)),
            f"fdp10{suffix}": float(found[labels == 0].sum() / max(found.sum(), 1)),
            f"power10{suffix}": float(np.mean(found[labels == 1])), "p_min": 1 / (count + 1)}


def metrics_table(labels, scores, maps, masks, reference=None) -> dict:
    """Per image score: image AUC and AP, the chi-square distance between the normal and abnormal score histograms,
    given a normal reference decision_metrics, and, given masks, each published score's map's pixel AUROC, AP and
    best Dice (normal images have no mask file and count as all-zero masks)."""
    results = {}
    p = None if reference is None else p_values(scores, reference)
    for name in scores:
        results[name] = image_metrics(labels, scores[name])
        results[name]["chi2"] = chi_square_distance(scores[name][labels == 0], scores[name][labels == 1])
        if p is not None:
            results[name].update(decision_metrics(labels, p[name], calibration_counts(reference)[name],
                                                   reference["in_sample"]))
    if masks is not None:
        pixel = pixel_metrics_of_maps(masks.numpy(), {name: maps[name].numpy() for name in SCORES})
        for name in SCORES:
            results[name].update(pixel[name])
    return results


def size_curve(labels, scored, masks, whole, count) -> dict:
    """{k: {score: metrics}} of the first k learners, k = 2..K: image AUC and AP of rec, unc and dsu and, given
    masks, their maps' pixel metrics (scored: dsu.Scored, with curve_maps when there are masks). The row of k = K is
    the whole ensemble of `count` learners, taken from its metrics (`whole`, metrics_table's), not computed again."""
    curve = {}
    for k, scores in scored.curve.items():
        curve[k] = {name: image_metrics(labels, values.numpy().astype(np.float64)) for name, values in scores.items()}
        if masks is not None:
            pixel = pixel_metrics_of_maps(masks.numpy(), {name: scored.curve_maps[k][name].numpy() for name in SCORES})
            for name in SCORES:
                curve[k][name].update(pixel[name])
    curve[count] = {name: {key: value for key, value in whole[name].items() if key in CURVE_METRICS}
                    for name in SCORES}
    return curve


def format_curve(curve) -> str:
    """One line per ensemble size: image AUC of each score, and pixel AUROC where there is one."""
    names = [f"{name} auc" for name in SCORES] + [f"{name} pixel_auroc" for name in SCORES
                                                    if "pixel_auroc" in curve[max(curve)][name]]
    lines = ["k  " + "  ".join(f"{name:>16}" for name in names)]
    for k, metrics in curve.items():
        values = [metrics[name]["auc"] for name in SCORES] + [metrics[name.split()[0]]["pixel_auroc"]
                                                             for name in names[len(SCORES):]]
        lines.append(f"{k:<2} " + "  ".join(f"{value:>16.4f}" for value in values))
    return "\n".join(lines)


def write_json(obj, path):
    atomic_write_text(path, json.dumps(obj, indent=2))


def write_scores_csv(path, files, labels, scores):
    atomic_write_csv(path, ["file", "label", *scores],
                     ([name, label, *(float(values[row]) for values in scores.values())]
                      for row, (name, label) in enumerate(zip(files, labels))))


def format_table(results, names) -> str:
    keys = list(dict.fromkeys(key for name in names for key in results[name]))
    widths = {key: max(9, len(key)) for key in keys}
    first = max(len(name) for name in names)
    lines = [f"{'score':<{first}}  " + "  ".join(f"{key:>{width}}" for key, width in widths.items())]
    for name in names:
        lines.append(f"{name:<{first}}  " + "  ".join(
            f"{results[name][key]:>{width}.4f}" if key in results[name] else f"{'-':>{width}}"
            for key, width in widths.items()))
    return "\n".join(lines)


def write_figures(run_dir, images_u8, maps, scores, labels, masks, curve):
    """hist.png, roc_pr.png, grid.png (the highest and lowest rec-scored images with their rec and dsu maps) and
    ensemble_size.png (each score against the number of learners)."""
    score_histograms(scores, labels, run_dir / "hist.png")
    roc_pr_curves(scores, labels, run_dir / "roc_pr.png")
    anomaly_grid(to_model_input(images_u8)[:, 0], maps["x_hat"],
                 {name: maps[name] for name in ("rec", "dsu")}, scores["rec"], labels,
                 run_dir / "grid.png", score_name="rec", masks=masks)
    ensemble_size_curve(curve, run_dir / "ensemble_size.png")


def log_metrics(log, cfg, results, step):
    """Metrics as scalars eval/<score>_<metric>, the curve as ensemble_size/<score>_<metric> at step k, and the
    run's hyper-parameters for the HParams dashboard."""
    from torch.utils.tensorboard.summary import hparams
    metrics = {f"{name}_{key}": value for name in IMAGE_SCORES for key, value in results[name].items()}
    log.scalars("eval", metrics, step)
    for k, by_score in results["ensemble_size"].items():
        log.scalars("ensemble_size", {f"{name}_{key}": value for name, values in by_score.items()
                                      for key, value in values.items()}, int(k))
    # add_hparams would write the metrics again, into a sub-run; write only its summaries, beside the scalars.
    for summary in hparams(config.hyperparameters(cfg), {f"eval/{key}": value for key, value in metrics.items()}):
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


def learner_diagnostics(features, states) -> dict:
    """How the learners relate on the test images (`features`: each one's tapped features of them): their pairwise
    linear CKA, each one's effective rank and top-direction share, and what training reported of each (its
    checkpoint's report and training warnings)."""
    shapes = [spectrum(values) for values in features]
    reports = [state.get("report") for state in states]
    # dict.fromkeys per learner: checkpoints written before December 2026 kept its training warnings twice
    warnings = [warning for state in states for warning in dict.fromkeys(
        [*(state.get("report") or {}).get("warnings", []), *state.get("training_warnings", [])])]
    return {"linear_cka": pairwise_cka(features).tolist(), "effective_rank": [rank.item() for rank, _ in shapes],
            "top_share": [share.item() for _, share in shapes], "learners": reports, "warnings": warnings}


def log_diagnostics(log, diagnostics, run_dir, step):
    """The CKA matrix as learner_cka.png and in TensorBoard, the warnings as log lines."""
    path = run_dir / "learner_cka.png"
    similarity_heatmap(np.asarray(diagnostics["linear_cka"]), path, title="linear CKA between learners (test set)")
    with Image.open(path) as image:
        log.tensorboard.add_image("diagnostics/learner_cka", np.asarray(image.convert("RGB")), step,
                                  dataformats="HWC")
    for index, (rank, share) in enumerate(zip(diagnostics["effective_rank"], diagnostics["top_share"])):
        log.tensorboard.add_scalar(f"diagnostics/effective_rank_learner{index}", rank, step)
        log.tensorboard.add_scalar(f"diagnostics/top_share_learner{index}", share, step)
    for warning in diagnostics["warnings"]:
        log.info(f"warning: {warning}")


def evaluate(cfg, device, echo=True) -> dict:
    """Score the test set with the trained run `cfg` describes; writes results.json, scores.csv, the figures and
    TensorBoard records into its run folder and returns the results. echo=False: log to the run folder only."""
    run_dir = existing_run_dir(cfg.run_dir)
    with runlock.hold(run_dir), stop.immediate(f"evaluation of {run_dir} left unfinished"):
        checkpoint.check_run_folder(run_dir, cfg)  # e.g. trained with an option removed since, as train.py refuses
        return _evaluate(cfg, run_dir, device, echo)


def _evaluate(cfg, run_dir, device, echo):
    """evaluate()'s work, inside the run folder's lock."""
    states = checkpoint.load_states(run_dir, cfg)
    learners = [checkpoint.rebuild(state, device) for state in states]
    split = read_split(dataset_dir(cfg.Data.root, cfg.Data.dataset))
    log = RunLog(run_dir, "eval", echo=echo)
    try:
        images = load_images(split.directory, split.test, cfg.Data.img_size, cfg.Exp.workers or None)
        labels = np.asarray(split.test_labels)
        masks = None
        if split.has_masks:  # a data set without a masks/ folder simply gets no pixel metrics
            masks = load_masks(split.directory, split.test, cfg.Data.img_size, cfg.Exp.workers or None)
        began = time.perf_counter()
        scored = score_dataset(learners, images, cfg.Exp.score_batch, device, features=True, curve=True,
                               curve_maps=masks is not None)
        score_s = time.perf_counter() - began
        maps = scored.maps
        reference = ensure_reference(run_dir, cfg, learners, device, log, lambda: reference_images(split, cfg))
        scores = referred_scores(maps, reference["statistics"])
        scores = {name: value.numpy().astype(np.float64) for name, value in scores.items()}
        results = metrics_table(labels, scores, maps, masks, reference)
        results["ensemble_size"] = size_curve(labels, scored, masks, results, len(learners))
        results["timing"] = {"score_s": score_s, "images": len(labels), "device": str(device)}
        results["run"] = {**config.run_settings(cfg), "split": describe(split.lists).label, "out_dir": str(run_dir)}
        results["reference"] = {"in_sample": reference["in_sample"], "fit": len(reference["fit_files"]),
                                "calibration": calibration_counts(reference),
                                "definition": reference["definition"], "made_s": reference["seconds"]}
        if states[0].get("imported"):  # scripts/import_published.py: trained by the published code
            results["run"]["imported"] = True
        results["diagnostics"] = learner_diagnostics(scored.features, states)
        write_scores_csv(run_dir / "scores.csv", split.test, labels, scores)
        write_json(results, run_dir / "results.json")  # after scores.csv: results.json marks the run evaluated
        log.info(f"{len(labels)} test images ({int(labels.sum())} abnormal); wrote {run_dir / 'results.json'}")
        if echo:
            print(format_table(results, IMAGE_SCORES))
            print(f"\nthe first k of the {len(learners)} learners (ensemble_size in results.json):")
            print(format_curve(results["ensemble_size"]))
        write_figures(run_dir, images, maps, {name: scores[name] for name in SCORES}, labels, masks,
                      results["ensemble_size"])
        log_metrics(log, cfg, results, step=cfg.Solver.num_epoch)
        log_images(log.tensorboard, images, maps, labels, masks, step=cfg.Solver.num_epoch)
        log_diagnostics(log, results["diagnostics"], run_dir, step=cfg.Solver.num_epoch)
        log.info(f"figures hist.png, roc_pr.png, grid.png, ensemble_size.png in {run_dir}; "
                 f"tensorboard --logdir {run_dir / 'tb'}")
    finally:
        log.close()
    return results


@cli
def main(argv=None):
    args = parse_args(argv)
    if args.summary:
        md_path, csv_path = write_summary(args.summary)
        print(md_path.read_text(), end="")
        print(f"wrote {md_path} and {csv_path}", file=sys.stderr)
        return
    cfg, device = setup(args.config, args.overrides)
    evaluate(cfg, device)


if __name__ == "__main__":
    main()
