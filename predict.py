"""Score new images with a trained D2UE ensemble: no labels, the run's own preprocessing.

    python predict.py --run runs/demo_AE IMAGES... [--out DIR] [--device auto] [--fpr 0.05 --score dsu]

IMAGES are files or folders (searched recursively; hidden files are skipped): PNG, JPEG, BMP, TIFF, and DICOM
(.dcm, .dicom). A DICOM goes through the preparation rule of datasets.dicom (dicom_to_array), then,
like every other image, the loader's grayscale / bilinear resize to the run's img_size, exactly as in training.
Writes <out>/predictions.csv (file, every score of utils/method/scores.py, and, when the run's normal reference is held
out of training, each score's p-value: the share of reference images scoring at least as high) and
<out>/overlays/<name>_dsu.png (dsu heat maps on one shared colour scale, so overlays compare by colour) and prints
the most anomalous images. --fpr A flags the images whose p-value of --score is at most A: on normal images, a
share of at most A is flagged (in expectation). Default out: <run>/predict. The run needs its reference
(reference.pt; train.py and eval.py make it).
"""
import argparse
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
from utils.errors import UserError, cli
from utils.method.dsu import SCORES, score_dataset
from utils.method.reference import IMAGE_SCORES, load as load_reference, p_values, referred_scores
from utils.report.figures import overlay
from utils.run.checkpoint import load_run
from utils.run.runtime import pick_device

SHOWN = 10  # rows of the printed table
OVERLAY_PERCENTILE = 99  # the shared colour scale of the overlays tops out at this percentile of all dsu pixels


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder written by train.py (holds config.yaml)")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--out", help="output folder (default: <run>/predict)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--fpr", type=float, help="flag the images whose p-value is at most this false-alarm rate")
    parser.add_argument("--score", default="dsu", choices=IMAGE_SCORES, help="the score --fpr and the table use")
    return parser.parse_args(argv)


def check_level(level, reference):
    """--fpr needs a held-out reference with enough calibration images: no p-value is below 1 / (n + 1)."""
    if reference["in_sample"]:
        raise UserError("this run's normal reference is its training images (Data.holdout=0), so its p-values would "
                        "be in-sample and too small; --fpr needs a run trained with Data.holdout, e.g. 0.1")
    count = len(reference["calibration_files"])
    if not 0 < level < 1:
        raise UserError(f"--fpr must be between 0 and 1, got {level}")
    if level < 1 / (count + 1):
        raise UserError(f"--fpr {level} is below 1 / (n + 1) = {1 / (count + 1):.4g} for this reference's "
                        f"{count} calibration images, so no image could be flagged; raise --fpr or Data.holdout")


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


def overlay_names(paths) -> list[str]:
    """`<stem>_dsu.png`; when stems repeat (a/x.png, b/x.png, b/x.dcm) the folder and suffix join in: a_x_png."""
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
    return [f"{name}_dsu.png" for name in names]


def write_predictions(path, paths, scores, p=None, flagged=None):
    """One row per image: every score, then each score's p-value (p_<score>) and the --fpr flag, when given."""
    columns = {**scores, **{f"p_{name}": values for name, values in (p or {}).items()}}
    atomic_write_csv(path, ["file", *columns, *(["flagged"] if flagged is not None else [])],
                     ([str(file), *(float(values[row]) for values in columns.values()),
                       *([int(flagged[row])] if flagged is not None else [])] for row, file in enumerate(paths)))


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


@cli
def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    cfg, learners = load_run(args.run, device)
    reference = load_reference(args.run, learners)
    if args.fpr is not None:
        check_level(args.fpr, reference)
    paths = find_images(args.images)
    images = load_files(paths, cfg.Data.img_size)
    maps = score_dataset(learners, images, cfg.Exp.score_batch, device).maps
    scores = referred_scores(maps, reference["statistics"])
    scores = {name: value.numpy().astype(np.float64) for name, value in scores.items()}
    p = None if reference["in_sample"] else p_values(scores, reference)
    flagged = None if args.fpr is None else p[args.score] <= args.fpr

    out = Path(args.out) if args.out else Path(args.run) / "predict"
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    write_predictions(out / "predictions.csv", paths, scores, p, flagged)
    dsu_maps = maps["dsu"].numpy()[:, 0]
    vmax = float(np.percentile(dsu_maps, OVERLAY_PERCENTILE))
    pixels = to_model_input(images).numpy()[:, 0]
    for index, name in enumerate(overlay_names(paths)):
        overlay(pixels[index], dsu_maps[index], out / "overlays" / name, vmax=vmax)

    print(f"scored {len(paths)} image(s) with {len(learners)} learners ({cfg.Model.network}, {cfg.Data.img_size} px);"
          f" highest {args.score} first:")
    print(format_top(paths, scores, args.score, p))
    if p is None:
        print("no p-values: this run's normal reference is its training images (in-sample); train with "
              "Data.holdout (e.g. 0.1) for p-values and --fpr")
    if flagged is not None:
        print(f"flagged {int(flagged.sum())} of {len(paths)} image(s) at p <= {args.fpr} on {args.score} "
              f"({len(reference['calibration_files'])} reference images calibrate it)")
    print(f"wrote {out / 'predictions.csv'} and {len(paths)} overlays in {out / 'overlays'} "
          f"(one colour scale: 0 to {vmax:.3g}, the {OVERLAY_PERCENTILE}th percentile of all dsu pixels)")


if __name__ == "__main__":
    main()
