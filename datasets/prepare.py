"""Turn the raw downloads into the Med-AD layout: <out>/<FOLDER>/images/ and <out>/<FOLDER>/data.json.

    python -m datasets.prepare {rsna,vin,brain,lag} --src RAW --out ROOT [--split FILE|seeded] [--allow-missing]
                                                                       [--workers N] [--seed S]
    python -m datasets.prepare fmnist --class C --out ROOT [--anomalies local] [--seed S]
                                                 (a one-class Fashion-MNIST dev set, other classes as anomalies, or
                                                  with --anomalies local the class with local defects and masks;
                                                  datasets/fashion_mnist.py)

FOLDER is RSNA, VinCXR, BrainTumor or LAG. data.json is
    {"train": {"0": [normal training files]}, "test": {"0": [normal test files], "1": [abnormal test files]}}

Raw layouts expected under --src (images are searched for recursively, so extra nesting is fine):
  rsna   RSNA Pneumonia Detection Challenge: DICOMs `<patientId>.dcm` (e.g. stage_2_train_images/).
  vin    VinBigData Chest X-ray: DICOMs `<image_id>.dicom` (e.g. train/).
  brain  Brain Tumor MRI: JPEGs in class folders `notumor` (normal) and `glioma`, `meningioma`, `pituitary`
         (abnormal); Training/ and Testing/ parents are allowed (both are pooled); the older names `no_tumor`,
         `*_tumor` are accepted too.
  lag    LAG fundus: JPEGs in class folders `non_glaucoma` (normal) and `suspicious_glaucoma` (abnormal), usually
         `<class>/image/*.jpg`; anything under an `attention_map` folder is skipped.

Split. By default the benchmark's own split, shipped in datasets/splits/ (see datasets/benchmark.py): exactly the
listed files are converted, and data.json holds its train "0", test "0" and test "1" lists in the shipped order
(`train.unlabeled` is not used by D2UE, so those images are neither converted nor listed). `--split FILE` takes
another file shaped like data.json the same way. Names are matched by stem, so `x.dcm`, `x.dicom`, `x.jpg` and
`x.png` all mean raw image `x`, and data.json names the output (a DICOM `x.png`, a JPEG its own name). When listed
files are not in the raw folder, the others are converted, the missing ones are named, and no data.json is written,
unless --allow-missing is given: then data.json lists only the files found (and datasets.check says how it differs
from the benchmark).

`--split seeded` draws a split instead, which is not the benchmark (the output says so): the labelled images are
sorted by output name, each class is shuffled with numpy.random.default_rng(seed) (normals first, then abnormals,
from the same generator), and the first (train normal, test normal, test abnormal) images are taken, at the
benchmark's sizes: rsna 3851/1000/1000, vin 4000/1000/1000, brain 1000/600/600, lag 1500/811/811. When there are too
few images, all three sizes are scaled by the same factor (rounded down), which keeps the table's proportions and a
balanced test set, and a warning says so. The DICOM sets then need their label files: rsna
`stage_2_detailed_class_info.csv` (class "Normal" = normal, "Lung Opacity" = abnormal, "No Lung Opacity / Not
Normal" left out, as in the benchmark; with only `stage_2_train_labels.csv`, its Target column is used, with a
warning, because Target 0 also holds the "not normal" images); vin `train.csv` (normal when every row for the
image_id has class_name "No finding").

Conversion, the benchmark's own rule, so that the prepared images are those every paper on the benchmark used. DICOM
(rsna, vin) -> `<stem>.png`, 512x512 8-bit (the rule: datasets/dicom.py). JPEG folders (brain, lag), benchmark split
or seeded: the original files are copied byte for byte under their own names (after checking that they decode), as
the benchmark did; the loader makes them 8-bit grayscale. When two raw files would get the same output name, the class
folder name (DICOM: the parent folder name) is prefixed. Files are converted in a process pool; outputs that already
exist are skipped, each file is written under a temporary name and renamed, and data.json is written last, so a killed
run is resumed by running the same command again. Unreadable files are listed one per line at the end, and then the
run fails without writing data.json.
"""
import argparse
import contextlib
import csv
import json
import multiprocessing
import os
import shutil
import signal
import sys
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from datasets import benchmark
from datasets.benchmark import DICOM_SUFFIXES, KEYS, PICTURE_SUFFIXES, name_stem
from datasets.dicom import dicom_to_array
from utils.atomic import atomic_write, atomic_write_text
from utils.errors import UserError, cli

SEEDED = "seeded"  # --split value that draws a split instead of reading one
SHOWN = 5          # file names an error message lists


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
    group: str             # folder name used to tell colliding names apart
    label: int | None      # None until the labels are known (DICOM datasets)


def warn(message):
    tqdm.write(f"warning: {message}", file=sys.stderr)


def some(names):
    return ", ".join(names[:SHOWN]) + (" ..." if len(names) > SHOWN else "")


# ---------------------------------------------------------------- conversion (runs in the worker processes)

def copy_picture(source, destination):
    """Copy a picture byte for byte, once it is known to decode (a corrupt file is reported, not copied)."""
    with Image.open(source) as image:
        image.load()
    with open(source, "rb") as original, atomic_write(destination, "wb") as copy:
        shutil.copyfileobj(original, copy)


def convert_one(job):
    """(kind, source, destination) -> None on success, or a one-line reason on failure."""
    kind, source, destination = job
    try:
        if kind == "picture":
            copy_picture(source, destination)
            return None
        pixels = dicom_to_array(source)
        with atomic_write(destination, "wb") as handle:
            Image.fromarray(pixels).save(handle, format="PNG")
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


def searched(spec):
    """Where find_raw_images looks, for messages."""
    if spec.kind == "dicom":
        return "looked for *.dcm and *.dicom files in all its subfolders"
    return f"looked for pictures in its class folders {', '.join(sorted(spec.class_folders))}"


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


def output_names(images, src, kind):
    """Raw path -> output file name: DICOM `<stem>.png`, a picture its own name; on a collision prefixed by the
    group folder (then by the whole folder path)."""
    def own(path):
        return f"{name_stem(path.name)}.png" if kind == "dicom" else path.name

    by_name = defaultdict(list)
    for image in images:
        by_name[own(image.path)].append(image)
    names = {}
    for name, group in by_name.items():
        for image in group:
            names[image.path] = name if len(group) == 1 else f"{image.group}_{name}"
    counts = defaultdict(int)
    for name in names.values():
        counts[name] += 1
    for path, name in names.items():
        if counts[name] > 1:
            names[path] = "_".join(path.relative_to(src).parts[:-1] + (own(path),))
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
        raise UserError(f"no stage_2_detailed_class_info.csv or stage_2_train_labels.csv under {src}; the seeded "
                        "split needs one (without --split the benchmark split needs no labels)")
    warn("using stage_2_train_labels.csv Target; its 0 also holds 'No Lung Opacity / Not Normal' images "
         "(add stage_2_detailed_class_info.csv to keep only 'Normal' as normal)")
    labels = defaultdict(int)
    for row in rows:  # one row per box: a patient is abnormal when any row says so
        labels[row["patientId"]] = max(labels[row["patientId"]], int(float(row["Target"] or 0)))
    return dict(labels)


def vin_labels(src):
    rows = read_csv_rows(src, "train.csv", ["image_id", "class_name"])
    if rows is None:
        raise UserError(f"no train.csv under {src}; the seeded split needs it "
                        "(without --split the benchmark split needs no labels)")
    labels = defaultdict(int)
    for row in rows:  # one row per radiologist finding: normal only when every row says "No finding"
        labels[row["image_id"]] = max(labels[row["image_id"]], int(row["class_name"] != "No finding"))
    return dict(labels)


LABEL_READERS = {"rsna": rsna_labels, "vin": vin_labels}


# ---------------------------------------------------------------- the split

def match_split(listed, source, images, names):
    """Lists of (output name, RawImage) for the names of a split, matched to raw images by output name or stem,
    in the split's order; and the listed names that match no raw image."""
    by_name = {names[image.path]: image for image in images}
    by_stem = defaultdict(list)
    for image in images:
        by_stem[name_stem(image.path.name)].append(image)

    split, seen, missing, ambiguous = {}, set(), [], []
    for key in KEYS:
        entries = []
        for listed_name in listed[key]:
            stem = name_stem(listed_name)
            if stem in seen:
                raise UserError(f"{source} lists {listed_name!r} more than once")
            seen.add(stem)
            image = by_name.get(listed_name) or (by_stem[stem][0] if len(by_stem.get(stem, [])) == 1 else None)
            if image is None:
                (ambiguous if by_stem.get(stem) else missing).append(listed_name)
            else:
                entries.append((names[image.path], image))
        split[key] = entries
    if ambiguous:
        raise UserError(f"{len(ambiguous)} file(s) listed in {source} match several raw files: "
                        f"{some(ambiguous)}; keep one copy of each")
    return split, missing


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
    """Lists of (output name, RawImage), each sorted by name: each class sorted by name, shuffled, and cut to the
    table's sizes."""
    normal = sorted(((names[image.path], image) for image in images if image.label == 0), key=lambda e: e[0])
    abnormal = sorted(((names[image.path], image) for image in images if image.label == 1), key=lambda e: e[0])
    train, test_normal, test_abnormal = scaled_sizes(sizes, len(normal), len(abnormal))
    generator = np.random.default_rng(seed)
    normal = [normal[index] for index in generator.permutation(len(normal))]
    abnormal = [abnormal[index] for index in generator.permutation(len(abnormal))]
    chosen = {("train", "0"): normal[:train],
              ("test", "0"): normal[train:train + test_normal],
              ("test", "1"): abnormal[:test_abnormal]}
    return {key: sorted(entries, key=lambda e: e[0]) for key, entries in chosen.items()}


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

def prepare(dataset, src, out, split=None, workers=None, seed=0, allow_missing=False):
    """Convert one raw data set into <out>/<FOLDER>; returns the path of the data.json written.

    split: None for the shipped benchmark split, a split file's path, or "seeded" to draw one.
    """
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise UserError(f"raw folder {src} does not exist; pass the raw download with --src")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")

    if split is None:
        listed, source = benchmark.load(spec.folder), f"the {spec.folder} benchmark split"
    elif str(split) == SEEDED:
        listed, source = None, None
    else:
        listed, source = benchmark.read_lists(split), f"split file {split}"
    if listed is not None and not any(listed.values()):
        raise UserError(f"{source} lists no files")

    images = find_raw_images(spec, src)
    names = output_names(images, src, spec.kind)
    missing = []
    if listed is not None:
        chosen, missing = match_split(listed, source, images, names)
        if not any(chosen.values()):
            raise UserError(f"none of the {len(missing)} files of {source} is under {src} ({searched(spec)}); "
                            f"point --src at the {dataset} raw download")
    else:
        if spec.kind == "dicom":
            images = label_dicoms(dataset, src, images)
        chosen = seeded_split(images, names, spec.sizes, seed)

    image_folder = out / spec.folder / "images"
    image_folder.mkdir(parents=True, exist_ok=True)
    for stale in image_folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)  # left behind by a killed run
    entries = [entry for key in KEYS for entry in chosen[key]]
    jobs = [(spec.kind, str(image.path), image_folder / name)
            for name, image in entries if not (image_folder / name).exists()]
    failures = convert_all(jobs, workers, spec.folder)
    if failures:
        for failure in failures:
            print(f"unreadable: {failure}", file=sys.stderr)
        raise UserError(f"{len(failures)} of {len(jobs)} file(s) could not be converted (listed above); "
                        "fix or remove them and rerun; data.json not written")
    if missing:
        not_found = (f"{len(missing)} of the {len(missing) + len(entries)} files of {source} are not under {src} "
                     f"({searched(spec)}): {some(missing)}")
        if not allow_missing:
            raise UserError(f"{not_found}; the other {len(entries)} are in {image_folder}; add the missing files and "
                            "rerun, or pass --allow-missing to write a data.json without them; data.json not written")
        warn(f"{not_found}; --allow-missing: data.json lists only the {len(entries)} files found")

    data = {"train": {"0": [name for name, _ in chosen["train", "0"]]},
            "test": {label: [name for name, _ in chosen["test", label]] for label in ("0", "1")}}
    data_json = out / spec.folder / "data.json"
    atomic_write_text(data_json, json.dumps(data, indent=1) + "\n")
    print(f"{spec.folder}: converted {len(jobs)}, kept {len(entries) - len(jobs)} existing; wrote {data_json} "
          f"(train {len(data['train']['0'])} normal; test {len(data['test']['0'])} normal / "
          f"{len(data['test']['1'])} abnormal)")
    if listed is None:
        print(f"split: drawn with seed {seed}, NOT the Med-AD benchmark split; results on it cannot be compared "
              "with published ones (leave out --split to use the benchmark split)")
    else:
        print(f"split: {benchmark.describe({key: data[key[0]][key[1]] for key in KEYS})}")
    return data_json


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line like every other user error."""

    def error(self, message):
        raise UserError(f"{message} (see python -m datasets.prepare --help)")


def parse_args(argv=None):
    parser = OneLineParser(prog="python -m datasets.prepare",
                           description="Convert a raw download into the Med-AD layout (see the module docstring).")
    parser.add_argument("dataset", choices=list(DATASETS), help="which data set the raw folder holds (or fmnist: "
                                                                "python -m datasets.prepare fmnist --help)")
    parser.add_argument("--src", required=True, help="the raw download folder")
    parser.add_argument("--out", required=True, help="Med-AD root; the data set goes into <out>/<FOLDER>")
    parser.add_argument("--split", help="a split file shaped like data.json, or 'seeded' to draw a split (not the "
                                        "benchmark); default: the benchmark's own split, shipped in datasets/splits")
    parser.add_argument("--allow-missing", action="store_true",
                        help="write data.json even when listed files are missing from --src (without them)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="conversion processes")
    parser.add_argument("--seed", type=int, default=0, help="seed of --split seeded")
    return parser.parse_args(argv)


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["fmnist"]:  # not a Med-AD download: a dev set with options of its own
        from datasets import fashion_mnist
        return fashion_mnist.main(argv[1:])
    args = parse_args(argv)
    prepare(args.dataset, args.src, args.out, split=args.split, workers=args.workers, seed=args.seed,
            allow_missing=args.allow_missing)


if __name__ == "__main__":
    main()
