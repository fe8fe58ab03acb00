"""A run's normal reference, the scores referred to it, and their p-values.

The reference images are the normal training images held out by Data.holdout or, without a holdout, the training
images themselves (in-sample: fitted images score lower than new normal ones, so its p-values are not offered).
A score's p-value is (1 + #{calibration >= score}) / (n + 1), exact (conformal) when a new normal image and the
n calibration images are scored by the same function. rec, unc and dsu depend on nothing fitted, so every reference
image calibrates them. The referred scores depend on per-pixel statistics: the images are split in two seeded
halves, the fit half gives the statistics, the calibration half alone calibrates them (split conformal). Test
images never enter. The reference (reference.pt in the run folder) records the learners' fingerprint and the
scores' definition; eval.py makes it again when either changes, predict.py refuses a stale one.

Referred scores, beside the published rec, unc and dsu (dsu.py):
<s>_z_top1: z = (map - center) / max(spread, floor) per pixel, center and spread the mean and standard deviation of
            the map over the fit half, floor the median of those spreads; the image score is the mean of the top 1%
            pixels of z smoothed by a 3 x 3 box, for small, local anomalies. Kept for rec and dsu (studies/scores).
"""
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch.nn import functional as F

from utils import seeding
from utils.atomic import atomic_write
from utils.errors import UserError
from utils.fingerprint import fingerprint
from utils.method.dsu import SCORES, image_scores, score_dataset

REFERRED = ("rec", "dsu")  # the published scores with a referred, pooled form
IMAGE_SCORES = (*SCORES, *(f"{name}_z_top1" for name in REFERRED))  # every image score a run reports
FLOOR = 0.5  # the spread's floor: this quantile of the reference's per-pixel spreads
TOP_SHARE = 0.01  # the share of pixels averaged
SMOOTH = 3  # side of the box filter applied first, so that one noisy pixel does not make a lesion
FILE = "reference.pt"
FORMAT = "d2ue-reference-1"
DEFINITION = (f"linear, floor q{FLOOR:g}; top {TOP_SHARE:g} of a {SMOOTH}x{SMOOTH} box; "
              f"scores {' '.join(IMAGE_SCORES)}; {' '.join(SCORES)} calibrated on both halves")


class NoReference(UserError):
    """The run folder has no usable reference: none yet, or one made with other learners or other scores."""


def reference_statistics(maps: dict) -> dict:
    """{score: {"center", "spread"}} per pixel (spread floored) from the maps of the fit half (N x 1 x S x S,
    N >= 2)."""
    statistics = {}
    for name in REFERRED:
        values = maps[name].double()
        spread = values.std(dim=0)
        floor = torch.quantile(spread.flatten(), FLOOR).item()
        tiny = 1e-6 * max(spread.mean().item(), 1e-30)  # never divides by zero
        statistics[name] = {"center": values.mean(dim=0).float(), "spread": spread.clamp_min(max(floor, tiny)).float()}
    return statistics


def referred_map(values: torch.Tensor, statistics: dict) -> torch.Tensor:
    """z: a score's map referred, pixel by pixel, to the normal reference (reference_statistics of that score)."""
    return (values - statistics["center"]) / statistics["spread"]


def top_mean(maps: torch.Tensor, share=TOP_SHARE, side=SMOOTH) -> torch.Tensor:
    """Per image, the mean of the `share` highest pixels of the map smoothed by a side x side box."""
    pad = side // 2
    smooth = F.avg_pool2d(F.pad(maps, (pad, pad, pad, pad), mode="replicate"), side, stride=1)
    flat = smooth.flatten(1)
    return flat.topk(max(1, round(share * flat.shape[1])), dim=1).values.mean(dim=1)


def referred_scores(maps: dict, statistics: dict) -> dict:
    """Every image score of IMAGE_SCORES, from the published maps of a batch or a set and a reference's statistics."""
    scores = image_scores(maps)
    for name in REFERRED:
        scores[f"{name}_z_top1"] = top_mean(referred_map(maps[name], statistics[name]))
    return scores


def halves(count: int, seed: int) -> tuple[list, list]:
    """Indices of the fit half (the larger when count is odd) and the calibration half, each in order."""
    order = torch.randperm(count, generator=seeding.generator(seed, 0, "reference")).tolist()
    return sorted(order[:(count + 1) // 2]), sorted(order[(count + 1) // 2:])


def learners_fingerprint(learners) -> str:
    """sha256 of every learner's weights and BatchNorm statistics, in order, wherever they sit."""
    return fingerprint([tensor for learner in learners for tensor in learner.state_dict().values()])


def fit(fit_maps: dict, calibration_maps: dict) -> tuple[dict, dict]:
    """(statistics, calibration image scores in float64) from the published maps of the two halves: the referred
    scores' of the calibration half, the published scores' of the fit half then the calibration half."""
    statistics = reference_statistics(fit_maps)
    calibration = referred_scores(calibration_maps, statistics)
    fitted = image_scores(fit_maps)
    for name in SCORES:
        calibration[name] = torch.cat([fitted[name], calibration[name]])
    return statistics, {name: values.double() for name, values in calibration.items()}


def make(learners, images_u8, files, in_sample, seed, batch_size, device) -> dict:
    """The reference of `learners` from the uint8 reference images (aligned with `files`): one scoring pass per half,
    each image scored once."""
    began = time.perf_counter()
    fit_half, calibration_half = halves(len(files), seed)
    # a pass per half, not one over all: other images in a batch could move the maps' last bits, and with them the
    # statistics and the referred scores of every image
    statistics, calibration = fit(score_dataset(learners, images_u8[fit_half], batch_size, device).maps,
                                  score_dataset(learners, images_u8[calibration_half], batch_size, device).maps)
    return {"format": FORMAT, "learners": learners_fingerprint(learners), "definition": DEFINITION,
            "in_sample": in_sample, "fit_files": [files[i] for i in fit_half],
            "calibration_files": [files[i] for i in calibration_half], "statistics": statistics,
            "calibration": calibration,
            "seconds": time.perf_counter() - began}


def save(reference: dict, run_dir) -> Path:
    path = Path(run_dir) / FILE
    with atomic_write(path, "wb") as handle:
        torch.save(reference, handle)
    return path


def load(run_dir, learners) -> dict:
    """The run folder's reference for these learners; NoReference when there is none or it is stale."""
    path = Path(run_dir) / FILE
    make_it = f"python eval.py --config {Path(run_dir) / 'config.yaml'} makes it"
    if not path.is_file():
        raise NoReference(f"run folder {run_dir} has no normal reference ({FILE}); {make_it}")
    try:
        reference = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign files all end here
        raise NoReference(f"{path} cannot be read ({type(err).__name__}); {make_it} again") from None
    if not isinstance(reference, dict) or reference.get("format") != FORMAT:
        raise NoReference(f"{path} is not a D2UE normal reference; {make_it} again")
    if reference["learners"] != learners_fingerprint(learners):
        raise NoReference(f"{path} was made with other learners than those in {run_dir}; {make_it} again")
    if reference["definition"] != DEFINITION:
        raise NoReference(f"{path} was made for other score definitions ({reference['definition']}); "
                          f"{make_it} again")
    return reference


def ensure(run_dir, cfg, learners, device, log, source) -> dict:
    """The run's reference: loaded when it is there and current, else made and saved; source() -> (files,
    in_sample, uint8 images) gives the reference images (datasets.medad.reference_images), read only then."""
    try:
        return load(run_dir, learners)
    except NoReference as why:
        if (Path(run_dir) / FILE).is_file():
            log.info(f"making the normal reference again: {why}")
    files, in_sample, images_u8 = source()
    reference = make(learners, images_u8, files, in_sample, cfg.Solver.seed, cfg.Exp.score_batch, device)
    save(reference, run_dir)
    kind = ("the training images (in-sample)" if in_sample
            else f"held-out normal images (Data.holdout={cfg.Data.holdout})")
    log.info(f"normal reference: {len(files)} {kind}, all calibrating {', '.join(SCORES)}; "
             f"{len(reference['fit_files'])} fit the referred scores, {len(reference['calibration_files'])} calibrate "
             f"them; made in {reference['seconds']:.1f} s")
    return reference


def calibration_counts(reference) -> dict:
    """{score: n}, the calibration images of each score; its smallest p-value is 1 / (n + 1)."""
    return {name: len(values) for name, values in reference["calibration"].items()}


def p_values(scores: dict, reference: dict) -> dict:
    """Per image score the reference calibrates, the share (1 + count) / (n + 1) of calibration images scoring at
    least as high; NaN where a score is not finite (that image is not assessed). A UserError when the reference's own
    calibration scores are not all finite: they would count as higher than every score."""
    values = {}
    for name in (name for name in scores if name in reference["calibration"]):
        calibration = reference["calibration"][name].numpy()
        bad = int((~np.isfinite(calibration)).sum())
        if bad:
            raise UserError(f"{bad} of {len(calibration)} calibration scores of {name} in this run's normal reference "
                            "are NaN or infinite; the learners diverged or a checkpoint is corrupt, so retrain or "
                            "check the checkpoints")
        ordered = np.sort(calibration)
        scored = np.asarray(scores[name], dtype=np.float64)
        at_least = len(ordered) - np.searchsorted(ordered, scored, side="left")
        values[name] = np.where(np.isfinite(scored), (1 + at_least) / (len(ordered) + 1), np.nan)
    return values


def discoveries(p, level) -> np.ndarray:
    """Benjamini-Hochberg at false-discovery rate `level` over a batch's p-values (scipy): True for the images it
    flags. Conformal p-values of one reference are positively dependent, under which BH controls the rate (Bates et
    al., Ann. Statist. 2023). A NaN p-value (a non-finite score) is not in the batch and never flagged."""
    p = np.asarray(p, dtype=np.float64)
    flagged = np.zeros(p.shape, dtype=bool)
    assessed = np.isfinite(p)
    if assessed.any():
        # a relative 1e-9: at the exact boundary p = k level / m (n = m / level - 1) rounding must not decide
        flagged[assessed] = stats.false_discovery_control(p[assessed], method="bh") <= level * (1 + 1e-9)
    return flagged
