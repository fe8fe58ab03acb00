"""Where a raw download's images and labels are, for each data set prepare converts.

Raw layouts expected under --src (images are searched for recursively, so extra nesting is fine):
  rsna   RSNA Pneumonia Detection Challenge: DICOMs `<patientId>.dcm` (e.g. stage_2_train_images/).
  vin    VinBigData Chest X-ray: DICOMs `<image_id>.dicom` (e.g. train/).
  brain  Brain Tumor MRI: JPEGs in class folders `notumor` (normal) and `glioma`, `meningioma`, `pituitary`
         (abnormal); Training/ and Testing/ parents are allowed (both are pooled); the older names `no_tumor`,
         `*_tumor` are accepted too.
  lag    LAG fundus: JPEGs in class folders `non_glaucoma` (normal) and `suspicious_glaucoma` (abnormal), usually
         `<class>/image/*.jpg`; anything under an `attention_map` folder is skipped.
"""
import csv
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from datasets.benchmark import DICOM_SUFFIXES, PICTURE_SUFFIXES, name_stem
from datasets.medad import FOLDERS
from utils.errors import UserError

SHOWN = 5  # file names an error message lists


@dataclass(frozen=True)
class DatasetSpec:
    folder: str
    kind: str                      # "dicom" or "picture"
    sizes: tuple[int, int, int]    # train normal, test normal, test abnormal
    class_folders: dict[str, int] | None = None  # picture datasets: folder name -> label (0 normal, 1 abnormal)


DATASETS = {
    "rsna": DatasetSpec(FOLDERS["rsna"], "dicom", (3851, 1000, 1000)),
    "vin": DatasetSpec(FOLDERS["vin"], "dicom", (4000, 1000, 1000)),
    "brain": DatasetSpec(FOLDERS["brain"], "picture", (1000, 600, 600), {
        "notumor": 0, "no_tumor": 0,
        "glioma": 1, "meningioma": 1, "pituitary": 1,
        "glioma_tumor": 1, "meningioma_tumor": 1, "pituitary_tumor": 1}),
    "lag": DatasetSpec(FOLDERS["lag"], "picture", (1500, 811, 811), {"non_glaucoma": 0, "suspicious_glaucoma": 1}),
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


def label_dicoms(dataset, src, images):
    """The DICOMs that have a label in the data set's label file, with that label."""
    labels = LABEL_READERS[dataset](src)
    labelled = [RawImage(image.path, image.group, labels[name_stem(image.path.name)])
                for image in images if name_stem(image.path.name) in labels]
    if not labelled:
        raise UserError(f"none of the {len(images)} DICOM files under {src} has a label in the label file; "
                        "check that --src is the raw download")
    return labelled
