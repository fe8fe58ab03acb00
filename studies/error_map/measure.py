"""Score one evaluated run folder with every map of maps.py: the study's record of that run.

The run's learners reconstruct its test images and the fit half of its normal reference (reference.pt, made by
eval.py); each map is pooled as the core pools rec: its mean for the image score, the map itself for pixel metrics,
and the referred top 1% (utils/method/reference.py) against per-pixel statistics of the fit half. Forward passes
only: these maps need no input gradient.
"""
import json
from pathlib import Path

import numpy as np
import torch

from datasets.medad import dataset_dir, load_images, load_masks, read_split
from models import to_model_input
from studies.error_map.maps import MAPS, base_maps, combined
from utils.method.reference import FLOOR, referred_map, top_mean
from utils.report.metrics import image_metrics, pixel_metrics_of_maps
from utils.run import checkpoint, config

BATCH = 128


@torch.no_grad()
def reconstruct(learners, images_u8, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, the ensemble's mean reconstruction, the learners' mean pixel variance) of uint8 images, on the CPU."""
    parts = []
    for start in range(0, len(images_u8), BATCH):
        x = to_model_input(images_u8[start:start + BATCH].to(device))
        outs = [learner(x) for learner in learners]
        x_hat = sum(out["x_hat"] for out in outs) / len(outs)
        variance = sum(learner.pixel_variance(out) for learner, out in zip(learners, outs)) / len(outs)
        parts.append((x.cpu(), x_hat.cpu(), variance.cpu()))
    return tuple(torch.cat(column) for column in zip(*parts))


def statistics(fit_map: torch.Tensor) -> dict:
    """Per-pixel center and floored spread of a map over the fit half, as the core's reference makes them."""
    values = fit_map.double()
    spread = values.std(dim=0)
    floor = torch.quantile(spread.flatten(), FLOOR).item()
    return {"center": values.mean(dim=0).float(), "spread": spread.clamp_min(max(floor, 1e-30)).float()}


def maps_of_run(run_dir, device) -> tuple[dict, dict, np.ndarray, torch.Tensor | None]:
    """(test maps, fit-half maps, test labels, masks or None) of an evaluated run folder."""
    run_dir = Path(run_dir)
    cfg = config.load(run_dir / "config.yaml")
    learners = checkpoint.load_learners(run_dir, cfg, device)
    split = read_split(dataset_dir(cfg.Data.root, cfg.Data.dataset))
    reference = torch.load(run_dir / "reference.pt", map_location="cpu", weights_only=True)
    size, workers = cfg.Data.img_size, cfg.Exp.workers or None
    fit = base_maps(*reconstruct(learners, load_images(split.directory, reference["fit_files"], size, workers),
                                 device))
    test = base_maps(*reconstruct(learners, load_images(split.directory, split.test, size, workers), device))
    means = {name: fit[name].double().mean().item() for name in ("l2", "ssim")}
    masks = load_masks(split.directory, split.test, size, workers) if split.has_masks else None
    return combined(test, means), combined(fit, means), np.asarray(split.test_labels), masks


def record_of(run_dir, device=torch.device("cpu")) -> dict:
    """Per map: image AUC and AP of its mean and of its referred top 1%, and its pixel metrics where there are
    masks; with the run's settings and eval.py's rec AUC (the l2 mean must match it)."""
    results = json.loads((Path(run_dir) / "results.json").read_text())
    test, fit, labels, masks = maps_of_run(run_dir, device)
    pixel = pixel_metrics_of_maps(masks.numpy(), {name: test[name].numpy() for name in MAPS}) \
        if masks is not None else {name: {} for name in MAPS}
    metrics = {}
    for name in MAPS:
        mean_score = test[name].flatten(1).double().mean(dim=1).numpy()
        top = top_mean(referred_map(test[name], statistics(fit[name]))).double().numpy()
        metrics[name] = {**image_metrics(labels, mean_score), **pixel[name],
                         **{f"z_top1_{key}": value for key, value in image_metrics(labels, top).items()}}
    return {"run": results["run"], "maps": metrics, "eval_rec_auc": results["rec"]["auc"],
            "fit_images": len(fit["l2"]), "test_images": len(labels)}
