"""Turn the raw downloads into the Med-AD layout: <out>/<FOLDER>/images/*.png and <out>/<FOLDER>/data.json.

    python -m datasets.prepare {rsna,vin,brain,lag} --src RAW --out ROOT [--split SPLIT_JSON] [--workers N] [--seed S]

FOLDER is RSNA, VinCXR, BrainTumor or LAG. data.json is
    {"train": {"0": [normal training files]}, "test": {"0": [normal test files], "1": [abnormal test files]}}

Raw layouts expected under --src (images are searched for recursively, so extra nesting is fine):
  rsna   RSNA Pneumonia Detection Challenge: DICOMs `<patientId>.dcm` (e.g. stage_2_train_images/); labels from
         `stage_2_detailed_class_info.csv` (class "Normal" = normal, "Lung Opacity" = abnormal, "No Lung Opacity /
         Not Normal" is left out, as in the benchmark); if only `stage_2_train_labels.csv` is there, its Target column
         is used (0 = normal, 1 = abnormal), with a warning, because Target 0 also holds the "not normal" images.
  vin    VinBigData Chest X-ray: DICOMs `<image_id>.dicom` (e.g. train/); labels from `train.csv`: an image is normal
         when every row for its image_id has class_name "No finding", abnormal otherwise.
  brain  Brain Tumor MRI: JPEGs in class folders `notumor` (normal) and `glioma`, `meningioma`, `pituitary`
         (abnormal); Training/ and Testing/ parents are allowed (both are pooled); the older names `no_tumor`,
         `*_tumor` are accepted too.
  lag    LAG fundus: JPEGs in class folders `non_glaucoma` (normal) and `suspicious_glaucoma` (abnormal), usually
         `<class>/image/*.jpg`; anything under an `attention_map` folder is skipped.

Split. With --split (the benchmark's published split file, shaped like data.json) exactly the listed files are
converted; names are matched by stem, so `x.dcm`, `x.dicom`, `x.jpg` and `x.png` all mean raw image `x`, and the
output is `x.png`. `train.unlabeled` is not used by D2UE and is ignored. Without --split the split is drawn: the
labelled images are sorted by output name, each class is shuffled with numpy.random.default_rng(seed) (normals
first, then abnormals, from the same generator), and the first (train normal, test normal, test abnormal) images
are taken, at the benchmark's sizes: rsna 3851/1000/1000, vin 4000/1000/1000, brain 1000/600/600, lag 1500/811/811.
When there are too few images, all three sizes are scaled by the same factor (rounded down), which keeps the
table's proportions and a balanced test set, and a warning says so.

Conversion. DICOM (rsna, vin), the benchmark's rule: pixel array; invert if MONOCHROME1; min-max scale to uint8
(rounded to nearest) when not already uint8; bilinear resize to 512x512 (PIL). JPEG folders (brain, lag): 8-bit
grayscale, size kept (the loader resizes). Output names are `<stem>.png`; when stems collide, the class folder name
(DICOM: the parent folder name) is prefixed. Files are converted in a process pool; outputs that already exist are
skipped, each PNG is written under a temporary name and renamed, and data.json is written last, so a killed run is
resumed by running the same command again. Unreadable files are listed one per line at the end, and then the run
fails without writing data.json.
"""
import argparse
import contextlib
import csv
import json
import multiprocessing
import os
import signal
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePosixPath

import numpy as np
import pydicom
from PIL import Image
from tqdm import tqdm

from utils.errors import UserError, cli

DICOM_SIZE = 512
DICOM_SUFFIXES = {".dcm", ".dicom"}
PICTURE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
# The three lists of data.json, in the order of the size table.
SPLIT_KEYS = (("train", "0"), ("test", "0"), ("test", "1"))


@dataclass(frozen=True)
class DatasetSpec:
    folder: str
    kind: str                      # "dicom" or "picture"
    sizes: tuple[int, int, int]    # train normal, test normal, test abnormal
    class_folders: dict[str, int] | None = None  # picture datasets: folder name -> label (0 normal, 1 abnormal)


DATASETS = {
    "rsna": DatasetSpec("RSNA", "dicom", (3851, 1000, 1000)),
    "vin": DatasetSpec("VinCXR", "dicom", (4000, 1000, 1000)),
    "brain": DatasetSpec("BrainTumor", "picture", (1000, 600, 600), {
        "notumor": 0, "no_tumor": 0,
        "glioma": 1, "meningioma": 1, "pituitary": 1,
        "glioma_tumor": 1, "meningioma_tumor": 1, "pituitary_tumor": 1}),
    "lag": DatasetSpec("LAG", "picture", (1500, 811, 811), {"non_glaucoma": 0, "suspicious_glaucoma": 1}),
}


@dataclass(frozen=True)
class RawImage:
    path: Path
    group: str             # folder name used to tell colliding stems apart
    label: int | None      # None until the labels are known (DICOM datasets)


def warn(message):
    tqdm.write(f"warning: {message}", file=sys.stderr)


def name_stem(name):
    """`x.png`, `x.dcm`, `images/x.jpg` -> `x`; unknown suffixes are kept (ids may contain dots)."""
    path = PurePosixPath(str(name).replace("\\", "/"))
    if path.suffix.lower() in DICOM_SUFFIXES | PICTURE_SUFFIXES:
        return path.stem
    return path.name


# ---------------------------------------------------------------- conversion (runs in the worker processes)

def dicom_to_array(path):
    """A DICOM file as a 512x512 uint8 array, by the benchmark's preparation rule (module docstring)."""
    dataset = pydicom.dcmread(path)
    pixels = dataset.pixel_array
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]  # multi-frame: the first frame only; chest X-rays are single frame
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut
        pixels = apply_color_lut(pixels, dataset)
    if pixels.ndim == 3:
        # Colour (pydicom >= 3 hands YBR over as RGB): ITU-R 601 luma, as PIL's convert("L").
        luma = pixels[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        pixels = np.rint(luma).astype(np.uint8) if pixels.dtype == np.uint8 else luma
    if pixels.dtype != np.uint8:
        pixels = pixels.astype(np.float64)  # no overflow when inverting or scaling wide integer types
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels if pixels.dtype == np.uint8 else pixels.max() - pixels
    if pixels.dtype != np.uint8:
        pixels = min_max_uint8(pixels)
    return np.asarray(Image.fromarray(pixels).resize((DICOM_SIZE, DICOM_SIZE), Image.BILINEAR))


def min_max_uint8(pixels):
    low, high = pixels.min(), pixels.max()
    if high > low:
        return np.rint((pixels - low) / (high - low) * 255).astype(np.uint8)
    return np.zeros(pixels.shape, np.uint8)  # a constant image has no contrast to stretch


def picture_to_array(path):
    """A JPEG (or other picture) as an 8-bit grayscale array of the same size."""
    with Image.open(path) as image:
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):
            # 16-bit PNG / float TIFF: min-max, as the loader does; convert("L") would clip to white.
            return min_max_uint8(np.asarray(image, dtype=np.float64))
        return np.asarray(image.convert("L"))


def save_png_atomic(pixels, destination):
    # Write beside the target, then rename: a killed run never leaves a truncated PNG under the real name.
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(pixels).save(temporary, format="PNG")  # 2-D uint8 -> mode "L"
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def convert_one(job):
    """(kind, source, destination) -> None on success, or a one-line reason on failure."""
    kind, source, destination = job
    try:
        # pydicom warns about every small irregularity; thousands of those would bury the progress bar.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = dicom_to_array(source) if kind == "dicom" else picture_to_array(source)
        save_png_atomic(pixels, destination)
        return None
    except Exception as err:  # any unreadable file is reported at the end, not fatal here
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"{source}: {type(err).__name__}: {reason}"


def ignore_interrupts():
    # Ctrl-C is handled once, by the main process; workers printing their own tracebacks would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def convert_all(jobs, workers, description):
    """Convert every job, in a process pool when workers > 1; returns the sorted failure lines."""
    serial = workers == 1 or len(jobs) <= 1
    pool = contextlib.nullcontext() if serial else multiprocessing.get_context().Pool(
        min(workers, len(jobs)), initializer=ignore_interrupts)
    with pool:
        chunk = max(1, min(16, len(jobs) // (workers * 8)))  # small chunks keep the bar moving
        results = map(convert_one, jobs) if serial else pool.imap_unordered(convert_one, jobs, chunksize=chunk)
        bar = tqdm(results, total=len(jobs), desc=description, unit="img", file=sys.stderr, disable=not jobs)
        return sorted(failure for failure in bar if failure)


# ---------------------------------------------------------------- finding raw images and their labels

def raw_files(src, suffixes):
    """Files under src with one of the suffixes, sorted; hidden files and folders (e.g. macOS `._x.jpg`,
    `__MACOSX/`) are skipped."""
    return [path for path in sorted(src.rglob("*"))
            if path.suffix.lower() in suffixes and path.is_file()
            and not any(part.startswith((".", "__MACOSX")) for part in path.relative_to(src).parts)]


def find_raw_images(spec, src):
    if spec.kind == "dicom":
        images = [RawImage(path, path.parent.name, None) for path in raw_files(src, DICOM_SUFFIXES)]
        if not images:
            raise UserError(f"no DICOM files (*.dcm, *.dicom) found under {src}; point --src at the raw download")
        return images
    images = []
    for path in raw_files(src, PICTURE_SUFFIXES):
        folders = [part.lower() for part in path.relative_to(src).parts[:-1]]
        if "attention_map" in folders:
            continue  # LAG ships attention maps beside the fundus images
        class_folder = next((folder for folder in reversed(folders) if folder in spec.class_folders), None)
        if class_folder is not None:
            images.append(RawImage(path, class_folder, spec.class_folders[class_folder]))
    if not images:
        wanted = ", ".join(sorted(spec.class_folders))
        raise UserError(f"no images found under {src} in class folders ({wanted}); point --src at the raw download")
    return images


def output_names(images, src):
    """Raw path -> output stem: its own stem, prefixed by its group folder (then its folder path) on collision."""
    names = {}
    by_stem = defaultdict(list)
    for image in images:
        by_stem[name_stem(image.path.name)].append(image)
    for stem, group in by_stem.items():
        for image in group:
            names[image.path] = stem if len(group) == 1 else f"{image.group}_{stem}"
    counts = defaultdict(int)
    for name in names.values():
        counts[name] += 1
    for path, name in names.items():
        if counts[name] > 1:
            names[path] = "_".join(path.relative_to(src).parts[:-1] + (name_stem(path.name),))
    return names


def read_csv_rows(src, file_name, columns):
    path = src / file_name
    if not path.is_file():
        path = next(src.rglob(file_name), None)
    if path is None:
        return None
    with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: a CSV saved with a byte-order mark
        reader = csv.DictReader(handle)
        missing = [column for column in columns if column not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path} has no column {missing[0]!r}; expected the original {file_name}")
        return list(reader)


def rsna_labels(src):
    rows = read_csv_rows(src, "stage_2_detailed_class_info.csv", ["patientId", "class"])
    if rows is not None:
        classes = {"Normal": 0, "Lung Opacity": 1}
        return {row["patientId"]: classes[row["class"]] for row in rows if row["class"] in classes}
    rows = read_csv_rows(src, "stage_2_train_labels.csv", ["patientId", "Target"])
    if rows is None:
        raise UserError(f"no stage_2_detailed_class_info.csv or stage_2_train_labels.csv under {src}; "
                        "add the label file or pass --split")
    warn("using stage_2_train_labels.csv Target; its 0 also holds 'No Lung Opacity / Not Normal' images "
         "(add stage_2_detailed_class_info.csv to keep only 'Normal' as normal)")
    labels = defaultdict(int)
    for row in rows:  # one row per box: a patient is abnormal when any row says so
        labels[row["patientId"]] = max(labels[row["patientId"]], int(float(row["Target"] or 0)))
    return dict(labels)


def vin_labels(src):
    rows = read_csv_rows(src, "train.csv", ["image_id", "class_name"])
    if rows is None:
        raise UserError(f"no train.csv under {src}; add the label file or pass --split")
    labels = defaultdict(int)
    for row in rows:  # one row per radiologist finding: normal only when every row says "No finding"
        labels[row["image_id"]] = max(labels[row["image_id"]], int(row["class_name"] != "No finding"))
    return dict(labels)


LABEL_READERS = {"rsna": rsna_labels, "vin": vin_labels}


# ---------------------------------------------------------------- the split

def read_split_file(split_path):
    """The three lists of file names of a published split file (`train.unlabeled` is not used by D2UE)."""
    try:
        published = json.loads(Path(split_path).read_text())
    except FileNotFoundError:
        raise UserError(f"split file {split_path} does not exist") from None
    except (OSError, ValueError) as err:
        raise UserError(f"split file {split_path} is not readable JSON ({err})") from None
    if not isinstance(published, dict):
        raise UserError(f"split file {split_path} must be a JSON object shaped like data.json")
    listed = {}
    for section, label in SPLIT_KEYS:
        names = published.get(section, {}).get(label) if isinstance(published.get(section), dict) else None
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise UserError(f"split file {split_path} has no list of file names at [{section!r}][{label!r}]")
        listed[section, label] = names
    return listed


def match_split(listed, split_path, images, names):
    """Lists of (output name, RawImage) for the names of a split file, matched to raw images by stem."""
    by_name = {names[image.path]: image for image in images}
    by_stem = defaultdict(list)
    for image in images:
        by_stem[name_stem(image.path.name)].append(image)

    split, seen, missing, ambiguous = {}, set(), [], []
    for key in SPLIT_KEYS:
        entries = []
        for listed_name in listed[key]:
            stem = name_stem(listed_name)
            if stem in seen:
                raise UserError(f"split file {split_path} lists {listed_name!r} more than once")
            seen.add(stem)
            image = by_name.get(stem) or (by_stem[stem][0] if len(by_stem.get(stem, [])) == 1 else None)
            if image is None:
                (ambiguous if by_stem.get(stem) else missing).append(listed_name)
            else:
                entries.append((stem, image))
        split[key] = entries
    if missing:
        raise UserError(f"{len(missing)} file(s) listed in {split_path} are not under the raw folder: "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if ambiguous:
        raise UserError(f"{len(ambiguous)} file(s) listed in {split_path} match several raw files: "
                        f"{', '.join(ambiguous[:5])}; keep one copy of each")
    return split


def scaled_sizes(sizes, normal_count, abnormal_count):
    """The table's sizes, or all three scaled by one factor (rounded down) when there are too few images."""
    train, test_normal, test_abnormal = sizes
    factor = min(Fraction(1), Fraction(normal_count, train + test_normal), Fraction(abnormal_count, test_abnormal))
    if factor == 1:
        return sizes
    scaled = tuple(int(size * factor) for size in sizes)
    if min(scaled) == 0:
        raise UserError(f"too few images: found {normal_count} normal and {abnormal_count} abnormal, "
                        f"the split needs {train + test_normal} and {test_abnormal} (or at least a fraction of it)")
    warn(f"found {normal_count} normal and {abnormal_count} abnormal images, fewer than the "
         f"{train + test_normal} and {test_abnormal} the split needs; using proportionally fewer: "
         f"train {scaled[0]} normal, test {scaled[1]} normal / {scaled[2]} abnormal")
    return scaled


def seeded_split(images, names, sizes, seed):
    """Lists of (output name, RawImage): each class sorted by name, shuffled, and cut to the table's sizes."""
    normal = sorted(((names[image.path], image) for image in images if image.label == 0), key=lambda e: e[0])
    abnormal = sorted(((names[image.path], image) for image in images if image.label == 1), key=lambda e: e[0])
    train, test_normal, test_abnormal = scaled_sizes(sizes, len(normal), len(abnormal))
    generator = np.random.default_rng(seed)
    normal = [normal[index] for index in generator.permutation(len(normal))]
    abnormal = [abnormal[index] for index in generator.permutation(len(abnormal))]
    return {("train", "0"): normal[:train],
            ("test", "0"): normal[train:train + test_normal],
            ("test", "1"): abnormal[:test_abnormal]}


def label_dicoms(dataset, src, images):
    """The DICOMs that have a label in the data set's label file, with that label."""
    labels = LABEL_READERS[dataset](src)
    labelled = [RawImage(image.path, image.group, labels[name_stem(image.path.name)])
                for image in images if name_stem(image.path.name) in labels]
    if not labelled:
        raise UserError(f"none of the {len(images)} DICOM files under {src} has a label in the label file; "
                        "check that --src is the raw download")
    return labelled


# ---------------------------------------------------------------- the command

def write_json_atomic(data, destination):
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(temporary, destination)


def prepare(dataset, src, out, split=None, workers=None, seed=0):
    """Convert one raw data set into <out>/<FOLDER>; returns the path of the data.json written."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise UserError(f"raw folder {src} does not exist; pass the raw download with --src")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")

    listed = read_split_file(split) if split is not None else None

    images = find_raw_images(spec, src)
    names = output_names(images, src)
    if listed is not None:
        chosen = match_split(listed, split, images, names)
    else:
        if spec.kind == "dicom":
            images = label_dicoms(dataset, src, images)
        chosen = seeded_split(images, names, spec.sizes, seed)

    image_folder = out / spec.folder / "images"
    image_folder.mkdir(parents=True, exist_ok=True)
    for stale in image_folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)  # left behind by a killed run
    entries = [entry for key in SPLIT_KEYS for entry in chosen[key]]
    jobs = [(spec.kind, str(image.path), image_folder / f"{name}.png")
            for name, image in entries if not (image_folder / f"{name}.png").exists()]
    failures = convert_all(jobs, workers, spec.folder)
    if failures:
        for failure in failures:
            print(f"unreadable: {failure}", file=sys.stderr)
        raise UserError(f"{len(failures)} of {len(jobs)} file(s) could not be converted (listed above); "
                        "fix or remove them and rerun; data.json not written")

    data = {"train": {"0": sorted(f"{name}.png" for name, _ in chosen["train", "0"])},
            "test": {label: sorted(f"{name}.png" for name, _ in chosen["test", label]) for label in ("0", "1")}}
    data_json = out / spec.folder / "data.json"
    write_json_atomic(data, data_json)
    print(f"{spec.folder}: converted {len(jobs)}, kept {len(entries) - len(jobs)} existing; wrote {data_json} "
          f"(train {len(data['train']['0'])} normal; test {len(data['test']['0'])} normal / "
          f"{len(data['test']['1'])} abnormal)")
    return data_json


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line like every other user error."""

    def error(self, message):
        raise UserError(f"{message} (see python -m datasets.prepare --help)")


def parse_args(argv=None):
    parser = OneLineParser(prog="python -m datasets.prepare",
                           description="Convert a raw download into the Med-AD layout (see the module docstring).")
    parser.add_argument("dataset", choices=list(DATASETS), help="which data set the raw folder holds")
    parser.add_argument("--src", required=True, help="the raw download folder")
    parser.add_argument("--out", required=True, help="Med-AD root; the data set goes into <out>/<FOLDER>")
    parser.add_argument("--split", help="published split JSON (data.json shape); default: a seeded split")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="conversion processes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split drawn without --split")
    return parser.parse_args(argv)


@cli
def main(argv=None):
    args = parse_args(argv)
    prepare(args.dataset, args.src, args.out, split=args.split, workers=args.workers, seed=args.seed)


if __name__ == "__main__":
    main()
