"""Which raw images a prepared data set holds, in which list: the benchmark's split, a split file, or a seeded draw.

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
"""
from collections import defaultdict
from fractions import Fraction

import numpy as np

from datasets.benchmark import name_stem
from datasets.medad import LISTS
from datasets.prepare.raw import some, warn
from utils.errors import UserError

SEEDED = "seeded"  # --split value that draws a split instead of reading one


def match_split(listed, source, images, names):
    """Lists of (output name, RawImage) for the names of a split, matched to raw images by output name or stem,
    in the split's order; and the listed names that match no raw image."""
    by_name = {names[image.path]: image for image in images}
    by_stem = defaultdict(list)
    for image in images:
        by_stem[name_stem(image.path.name)].append(image)

    split, seen, missing, ambiguous = {}, set(), [], []
    for key in LISTS:
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
