"""Score the test set with a trained D2UE ensemble: rec, unc and dsu, with image-level AUC and AP.

    python eval.py --config cfgs/RSNA_AE.yaml [Section.key=value ...]

The K learners are rebuilt from their checkpoints alone. Writes <run>/results.json, <run>/scores.csv and prints a
table.
"""
import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np
import torch

import models
from datasets.medad import dataset_dir, load_images, read_split, to_model_input
from utils import checkpoint, config
from utils.errors import UserError, cli
from utils.metrics import image_metrics
from utils.runtime import RunLog, pick_device, set_tf32
from utils.scores import SCORES, image_scores, score_maps


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the YAML file the run was trained with")
    parser.add_argument("overrides", nargs="*", help="Section.key=value, as given to train.py")
    return parser.parse_args(argv)


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
        learners.append(learner.to(device).eval().requires_grad_(False))
    return learners


def score_dataset(learners, images_u8, batch_size, device):
    """Pixel maps (float16, on the CPU) and image scores of every image, in batches.

    batch_size 0 picks the largest batch that fits: it starts high and halves on an out-of-memory error.
    """
    batch_size = batch_size or (1024 if device.type == "cuda" else 128)
    while True:
        try:
            maps = {name: [] for name in (*SCORES, "x_hat")}
            for start in range(0, len(images_u8), batch_size):
                x = to_model_input(images_u8[start:start + batch_size].to(device))
                for name, value in score_maps(learners, x).items():
                    maps[name].append(value.half().cpu())
            maps = {name: torch.cat(parts) for name, parts in maps.items()}
            return maps, image_scores({name: maps[name].float() for name in SCORES})
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            torch.cuda.empty_cache()


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
    keys = [key for key in results[SCORES[0]]]
    lines = ["score  " + "  ".join(f"{key:>9}" for key in keys)]
    for name in SCORES:
        lines.append(f"{name:<5}  " + "  ".join(f"{results[name][key]:>9.4f}" for key in keys))
    return "\n".join(lines)


@cli
def main(argv=None):
    args = parse_args(argv)
    cfg = config.load(args.config, args.overrides)
    device = pick_device(cfg.Exp.device)
    set_tf32(cfg.Exp.tf32)
    run_dir = cfg.run_dir
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} not found; train first: python train.py --config {args.config}")
    learners = load_learners(run_dir, cfg, device)
    split = read_split(dataset_dir(cfg.Data.root, cfg.Data.dataset))
    log = RunLog(run_dir, "eval")
    images = load_images(split.directory, split.test, cfg.Data.img_size, cfg.Exp.workers or None)
    labels = np.asarray(split.test_labels)
    _, scores = score_dataset(learners, images, cfg.Exp.score_batch, device)
    scores = {name: value.numpy().astype(np.float64) for name, value in scores.items()}
    results = {name: image_metrics(labels, scores[name]) for name in SCORES}
    results["run"] = {"dataset": cfg.Data.dataset, "network": cfg.Model.network, "seed": cfg.Solver.seed,
                      "num_learners": cfg.Model.num_learners, "img_size": cfg.Data.img_size,
                      "num_epoch": cfg.Solver.num_epoch, "lr": cfg.Solver.lr, "Lambda": cfg.Solver.Lambda,
                      "layer": cfg.Model.layer, "out_dir": str(run_dir)}
    write_json(results, run_dir / "results.json")
    write_scores_csv(run_dir / "scores.csv", split.test, labels, scores)
    log.info(f"{len(labels)} test images ({int(labels.sum())} abnormal); wrote {run_dir / 'results.json'}")
    print(format_table(results))
    log.close()


if __name__ == "__main__":
    main()
