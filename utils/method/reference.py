"""A run's normal reference: what referring scores to normal images needs, made once from normal images and kept in
the run folder (reference.pt).

The reference images are the normal training images held out by Data.holdout or, without a holdout, the training
images themselves (in-sample: fitted images score lower than new normal ones, so its p-values are not offered).
They are split in two seeded halves: the fit half gives every statistic the new scores use (utils/method/scores.py), the
calibration half only its image scores, so that a new normal image and a calibration image are scored by the same
function and the p-value (1 + #{calibration >= score}) / (n + 1) is exact (split conformal). Test images never
enter. The reference records the learners' fingerprint and the scores' definition; eval.py makes it again when
either changes, predict.py refuses a stale one.
"""
import time
from pathlib import Path

import numpy as np
import torch

from utils import seeding
from utils.atomic import atomic_write
from utils.errors import UserError
from utils.method.ensemble import score_dataset
from utils.method.scores import FORM, IMAGE_SCORES, LOG_EPS, SMOOTH, TOP_SHARE, image_scores, image_statistics, \
    reference_statistics, referred_scores
from utils.fingerprint import fingerprint

FILE = "reference.pt"
FORMAT = "d2ue-reference-1"


class NoReference(UserError):
    """The run folder has no usable reference: none yet, or one made with other learners or other scores."""


def halves(count: int, seed: int) -> tuple[list, list]:
    """Indices of the fit half (the larger when count is odd) and the calibration half, each in order."""
    order = torch.randperm(count, generator=seeding.generator(seed, 0, "reference")).tolist()
    return sorted(order[:(count + 1) // 2]), sorted(order[(count + 1) // 2:])


def learners_fingerprint(learners) -> str:
    """sha256 of every learner's weights and BatchNorm statistics, in order, wherever they sit."""
    return fingerprint([tensor for learner in learners for tensor in learner.state_dict().values()])


def definition(form=FORM) -> str:
    """What the stored statistics and calibration scores depend on besides the learners."""
    return (f"{form.name}; log eps {LOG_EPS:g} x mean; top {TOP_SHARE:g} of a {SMOOTH}x{SMOOTH} box; "
            f"scores {' '.join(IMAGE_SCORES)}")


def fit(fit_maps, calibration_maps, form=FORM) -> tuple[dict, dict, dict]:
    """(statistics, image statistics, calibration image scores) from the published maps of the two halves."""
    statistics = reference_statistics(fit_maps, form)
    image_stats = image_statistics(image_scores(fit_maps))
    _, calibration_scores = referred_scores(calibration_maps, statistics, image_stats)
    return statistics, image_stats, {name: values.double() for name, values in calibration_scores.items()}


def make(learners, images_u8, files, in_sample, seed, batch_size, device, form=FORM) -> dict:
    """The reference of `learners` from the uint8 reference images (aligned with `files`)."""
    began = time.perf_counter()
    fit_half, calibration_half = halves(len(files), seed)
    statistics, image_stats, calibration = fit(score_dataset(learners, images_u8[fit_half], batch_size, device)[0],
                                               score_dataset(learners, images_u8[calibration_half], batch_size,
                                                             device)[0], form)
    return {"format": FORMAT, "learners": learners_fingerprint(learners), "definition": definition(form),
            "in_sample": in_sample, "fit_files": [files[i] for i in fit_half],
            "calibration_files": [files[i] for i in calibration_half], "statistics": statistics,
            "image_statistics": image_stats, "calibration": calibration, "seconds": time.perf_counter() - began}


def save(reference: dict, run_dir) -> Path:
    path = Path(run_dir) / FILE
    with atomic_write(path, "wb") as handle:
        torch.save(reference, handle)
    return path


def load(run_dir, learners, form=FORM) -> dict:
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
    if reference["definition"] != definition(form):
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
    log.info(f"normal reference: {len(files)} {kind}, {len(reference['fit_files'])} to fit, "
             f"{len(reference['calibration_files'])} to calibrate; made in {reference['seconds']:.1f} s")
    return reference


def p_values(scores: dict, reference: dict) -> dict:
    """Per image score, the share (1 + count) / (n + 1) of calibration images scoring at least as high."""
    values = {}
    for name, calibration in reference["calibration"].items():
        ordered = np.sort(calibration.numpy())
        at_least = len(ordered) - np.searchsorted(ordered, np.asarray(scores[name], dtype=np.float64), side="left")
        values[name] = (1 + at_least) / (len(ordered) + 1)
    return values
