"""Score new images with a trained D2UE ensemble: no labels, the run's own preprocessing.

    python predict.py --run runs/demo_AE IMAGES... [--out DIR] [--device auto] [--score rec]
                      [--fpr 0.05 | --fdr 0.1] [--overlays top|all|none]

IMAGES are files or folders (searched recursively; hidden files are skipped): PNG, JPEG, BMP, TIFF, and DICOM
(.dcm, .dicom). A DICOM goes through the preparation rule of datasets.dicom (dicom_to_array), then,
like every other image, the loader's grayscale / bilinear resize to the run's img_size, exactly as in training.
Writes <out>/predictions.csv (file, every image score of utils/method/reference.py, and, when the run's normal
reference is held out of training, each score's p-value: the share of reference images scoring at least as high) and
prints the images highest on --score (default rec, the score the project advises reading). --fpr A flags the images
whose p-value of --score is at most A: on normal images, a share of at most A is flagged (in expectation). --fdr Q
flags by Benjamini-Hochberg over the images' p-values: of the images flagged, a share of at most Q is normal (in
expectation). Either adds a `flagged` column; an image whose score is NaN or infinite has no p-value and is never
flagged.

Overlays, <out>/overlays/<name>_<map>.png, paint the pixel map of --score over the image: for a referred or pooled
score (rec_z_top1, dsu_z_top1) the raw map of the published score it comes from (rec or dsu). All share one colour
scale, 0 (grey) to the 99th percentile of that map over every image scored (the top colour), printed at the end, so
overlays compare by colour. --overlays chooses the images:
    top   (default) the images --fpr or --fdr flags; without them the 10 highest on --score, the printed table's rows
    all   every image
    none  no overlays
Default out: <run>/predict. The run needs its reference (reference.pt; train.py and eval.py make it).
"""
import argparse
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datasets.benchmark import DICOM_SUFFIXES, IMAGE_SUFFIXES
from datasets.dicom import dicom_to_array
from datasets.medad import decode_threads, open_gray, resize_gray
from models import to_model_input
from utils.atomic import atomic_write_csv
from utils.errors import ArgumentParser, UserError, cli
from utils.method.dsu import SCORES, score_dataset
from utils.method.reference import IMAGE_SCORES, calibration_counts, discoveries, load as load_reference, p_values, \
    referred_scores
from utils.report.overlay import overlay_array, write_overlay
from utils.run.checkpoint import load_run
from utils.run.runtime import pick_device

SHOWN = 10  # rows of the printed table
TOP_OVERLAYS = SHOWN  # --overlays top without a flag: every row of the printed table has its overlay
OVERLAY_PERCENTILE = 99  # the shared colour scale of the overlays tops out at this percentile of the map's pixels
OVERLAY_CHOICES = ("top", "all", "none")


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder written by train.py (holds config.yaml)")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--out", help="output folder (default: <run>/predict)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    flag = parser.add_mutually_exclusive_group()
    flag.add_argument("--fpr", type=float, help="flag the images whose p-value is at most this false-alarm rate")
    flag.add_argument("--fdr", type=float, metavar="Q",
                      help="flag by Benjamini-Hochberg over these images' p-values at this false-discovery rate")
    parser.add_argument("--score", default="rec", choices=IMAGE_SCORES,
                        help="the score --fpr or --fdr, the table and the overlays use (default rec)")
    parser.add_argument("--overlays", default="top", choices=OVERLAY_CHOICES,
                        help="top: the flagged images, or without --fpr or --fdr the 10 highest; all; none "
                             "(default top)")
    return parser.parse_args(argv)


def check_level(flag, level, reference, score):
    """--fpr and --fdr need a held-out reference and a level in (0, 1); --fpr one of at least 1 / (n + 1) for the n
    calibration images of `score`: no p-value is below it. (For --fdr that bound depends on the batch.)"""
    if reference["in_sample"]:
        raise UserError("this run's normal reference is its training images (Data.holdout=0), so its p-values would "
                        f"be in-sample and too small; {flag} needs a run trained with Data.holdout, e.g. 0.1")
    if not 0 < level < 1:
        raise UserError(f"{flag} must be between 0 and 1, got {level}")
    count = calibration_counts(reference)[score]
    if flag == "--fpr" and level < 1 / (count + 1):
        raise UserError(f"--fpr {level} is below 1 / (n + 1) = {1 / (count + 1):.4g} for the {count} calibration "
                        f"images of {score}, so no image could be flagged; raise --fpr or Data.holdout")


def output_folder(out, run) -> Path:
    """--out (default <run>/predict) as a folder; a path that is there and is not a folder is a UserError."""
    folder = Path(out) if out else Path(run) / "predict"
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file, not a folder; name a folder (made when missing) for "
                        "predictions.csv and the overlays")
    return folder


def make_folder(folder):
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a parent that is a file, no permission
        raise UserError(f"cannot make the output folder {folder} ({err.strerror}); name another with --out") from None


def find_images(arguments) -> list[Path]:
    """Files as given, folders searched recursively for known image suffixes; duplicates dropped, order kept."""
    found = []
    for argument in arguments:
        path = Path(argument)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            raise UserError(f"{path} does not exist; pass image files or folders")
    unique, seen = [], set()
    for path in found:  # a file named twice (or also inside a named folder) is scored once
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    if not unique:
        raise UserError(f"no images found in {', '.join(arguments)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return unique


def decode(path, img_size) -> np.ndarray:
    """uint8 (S, S), as the loader decodes a prepared image (datasets.medad.resize_gray); a DICOM is prepared first."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        try:
            gray = Image.fromarray(dicom_to_array(path))
        except Exception as err:  # pydicom and its decoders raise many types for a broken file
            reason = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
            raise UserError(f"{type(err).__name__}: {reason}") from None
    else:
        try:
            gray = open_gray(path)
        except UserError as err:
            # open_gray raises `from None`; __context__ still holds the decoder's own reason, without the hint.
            raise UserError(str(err.__context__ or err)) from None
    return resize_gray(gray, img_size)


def load_files(paths, img_size) -> torch.Tensor:
    """uint8 (N, 1, S, S); every unreadable file is named in one error."""
    def attempt(path):
        try:
            return decode(path, img_size), None
        except UserError as err:
            return None, f"{path} ({err})"

    with ThreadPoolExecutor(decode_threads()) as pool:
        results = list(pool.map(attempt, paths))
    failures = [failure for _, failure in results if failure]
    if failures:
        raise UserError(f"cannot read {len(failures)} of {len(paths)} image(s): {'; '.join(failures[:5])}"
                        f"{' ...' if len(failures) > 5 else ''}; fix or remove them, or leave them out")
    return torch.from_numpy(np.stack([array for array, _ in results])).unsqueeze(1)


def map_of(score) -> str:
    """The published score whose raw pixel map an overlay of `score` shows: rec_z_top1 -> rec."""
    return score.split("_")[0]


def overlay_names(paths, map_name) -> list[str]:
    """`<stem>_<map>.png`; when stems repeat (a/x.png, b/x.png, b/x.dcm) the folder and suffix join in: a_x_png."""
    repeats = Counter(path.stem for path in paths)
    names, taken = [], set()  # a set: no quadratic search over thousands of images
    for path in paths:
        stem = path.stem
        if repeats[stem] > 1:
            stem = f"{path.parent.name}_{path.stem}{path.suffix.replace('.', '_')}".lstrip("_")
        name, copy = stem, 1
        while name in taken:
            copy += 1
            name = f"{stem}_{copy}"
        names.append(name)
        taken.add(name)
    return [f"{name}_{map_name}.png" for name in names]


def overlay_rows(which, scores, by, flagged) -> np.ndarray:
    """Indices of the images to overlay, highest on `by` first: see --overlays."""
    order = np.argsort(-scores[by], kind="stable")
    if which == "all":
        return order
    if which == "none":
        return order[:0]
    return order[flagged[order]] if flagged is not None else order[:TOP_OVERLAYS]


def write_overlays(folder, paths, images, maps, rows, map_name) -> str:
    """The overlays of the images `rows` (of uint8 `images`) on the shared scale; returns the scale in words."""
    values = maps[map_name].numpy()[:, 0]
    vmax = float(np.percentile(values, OVERLAY_PERCENTILE))  # of every image: the scale does not depend on `rows`
    scale = (f"one colour scale: 0 (grey) to {vmax:.3g} (top colour), the {OVERLAY_PERCENTILE}th percentile of the "
             f"{map_name} map over all {len(paths)} image(s)")
    names = overlay_names(paths, map_name)
    for row in rows:
        pixels = to_model_input(images[row]).numpy()[0]
        write_overlay(overlay_array(pixels, values[row], vmax), folder / names[row], note=f"{map_name} map; {scale}")
    return scale


def write_predictions(path, paths, scores, p=None, flagged=None):
    """One row per image: every score, then each score's p-value (p_<score>; empty for a non-finite score) and the
    flag, when given."""
    p_columns = {f"p_{name}": values for name, values in (p or {}).items()}
    atomic_write_csv(path, ["file", *scores, *p_columns, *(["flagged"] if flagged is not None else [])],
                     ([str(file), *(float(values[row]) for values in scores.values()),
                       *("" if np.isnan(values[row]) else float(values[row]) for values in p_columns.values()),
                       *([int(flagged[row])] if flagged is not None else [])] for row, file in enumerate(paths)))


def non_finite_line(paths, scores, by, shown=5) -> str | None:
    """The images whose score `by` is NaN or infinite, in words, or None when there are none."""
    rows = np.flatnonzero(~np.isfinite(scores[by]))
    if not len(rows):
        return None
    named = ", ".join(str(paths[row]) for row in rows[:shown]) + (" ..." if len(rows) > shown else "")
    return f"{len(rows)} image(s) with a non-finite {by} score (NaN or infinite): no p-value, never flagged: {named}"


def format_top(paths, scores, by, p=None, shown=SHOWN) -> str:
    """The `shown` highest images by score `by`: the published scores, `by`, and its p-value when there is one."""
    names = list(dict.fromkeys([*SCORES, by]))
    order = np.argsort(-scores[by], kind="stable")[:shown]
    width = max(len(str(paths[i])) for i in order)
    lines = [f"{'file':<{width}}  " + "  ".join(f"{name:>10}" for name in names) + ("  p-value" if p else "")]
    for i in order:
        lines.append(f"{str(paths[i]):<{width}}  " + "  ".join(f"{scores[name][i]:>10.4g}" for name in names)
                     + (f"  {p[by][i]:>7.4f}" if p else ""))
    return "\n".join(lines)


def fdr_lines(p, flagged, level, score, count) -> list[str]:
    """What Benjamini-Hochberg at `level` did over a batch's p-values `p` of `score` (`count` calibration images;
    `flagged`: discoveries'), what it promises, and, when it flagged nothing, the calibration images that would let
    it flag one image."""
    assessed = int(np.isfinite(p).sum())
    if not assessed:
        return [f"flagged none: no image has a finite {score} score"]
    batch = f"{assessed} image(s)" + (f" with a p-value (of {len(p)})" if assessed < len(p) else "")
    if flagged.any():
        return [f"flagged {int(flagged.sum())} of {batch} by Benjamini-Hochberg at a false-discovery rate of {level} "
                f"on {score}: those with p <= {p[flagged].max():.4g}",
                f"in expectation, at most a share {level} of the flagged images are normal, given that the "
                f"reference's {count} normal images are exchangeable with the new normal ones"]
    # BH flags k images only if some p_(k) <= k level / m, and no p-value is below 1 / (n + 1)
    needed = math.ceil(round(assessed / level - 1, 9))
    return [f"flagged none of {batch} by Benjamini-Hochberg at a false-discovery rate of {level} on {score}",
            f"to flag even a single image of a batch of {assessed} at {level}, it needs at least {needed} calibration "
            f"images (n >= m / Q - 1); {score} has {count}"
            + (" (raise Data.holdout)" if count < needed else ": enough, but no image scored high enough")]


def overlay_line(args, rows, flagged, map_name, folder, scale) -> str:
    """What the overlays hold, for the last printed line."""
    if args.overlays == "none":
        return "no overlays (--overlays none)"
    if args.overlays == "all":
        chosen = "every image"
    elif flagged is not None:
        chosen = "the flagged images"
    else:
        chosen = f"the {len(rows)} highest on {args.score} (--overlays all: every image)"
    if not len(rows):
        return "no overlays: no image is flagged"
    if map_name == args.score:
        shown = f"the {map_name} map"
    elif args.score.startswith(map_name):
        shown = f"the raw {map_name} map, which {args.score} comes from,"
    else:
        shown = f"the {map_name} map ({args.score} has no map of its own)"
    return f"wrote {len(rows)} overlay(s) of {shown} for {chosen} in {folder} ({scale})"


@cli
def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    cfg, learners = load_run(args.run, device)
    reference = load_reference(args.run, learners)
    for flag, level in (("--fpr", args.fpr), ("--fdr", args.fdr)):
        if level is not None:
            check_level(flag, level, reference, args.score)
    out = output_folder(args.out, args.run)
    paths = find_images(args.images)
    images = load_files(paths, cfg.Data.img_size)
    make_folder(out)  # before the scoring pass: a folder that cannot be made costs no wait
    maps = score_dataset(learners, images, cfg.Exp.score_batch, device).maps
    scores = referred_scores(maps, reference["statistics"])
    scores = {name: value.numpy().astype(np.float64) for name, value in scores.items()}
    p = None if reference["in_sample"] else p_values(scores, reference)
    flagged = None
    if args.fpr is not None:
        flagged = p[args.score] <= args.fpr
    elif args.fdr is not None:
        flagged = discoveries(p[args.score], args.fdr)

    write_predictions(out / "predictions.csv", paths, scores, p, flagged)
    rows = overlay_rows(args.overlays, scores, args.score, flagged)
    map_name = map_of(args.score)
    scale = write_overlays(out / "overlays", paths, images, maps, rows, map_name) if len(rows) else None

    print(f"scored {len(paths)} image(s) with {len(learners)} learners ({cfg.Model.network}, {cfg.Data.img_size} px);"
          f" highest {args.score} first:")
    print(format_top(paths, scores, args.score, p))
    if non_finite := non_finite_line(paths, scores, args.score):
        print(non_finite)
    if p is None:
        print("no p-values: this run's normal reference is its training images (in-sample); train with "
              "Data.holdout (e.g. 0.1) for p-values, --fpr and --fdr")
    count = calibration_counts(reference)[args.score]
    if args.fpr is not None:
        print(f"flagged {int(flagged.sum())} of {len(paths)} image(s) at p <= {args.fpr} on {args.score} "
              f"({count} reference images calibrate it)")
    elif args.fdr is not None:
        print("\n".join(fdr_lines(p[args.score], flagged, args.fdr, args.score, count)))
    print(f"wrote {out / 'predictions.csv'}")
    print(overlay_line(args, rows, flagged, map_name, out / "overlays", scale))


if __name__ == "__main__":
    main()
