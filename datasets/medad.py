"""Med-AD data sets: the folder layout, its data.json, and image loading.

    <root>/<FOLDER>/images/<file>.png|.jpg    any size, read as 8-bit grayscale
    <root>/<FOLDER>/masks/<file>              optional pixel masks of abnormal test images (non-zero = lesion)
    <root>/<FOLDER>/data.json
        {"train": {"0": [normal training files], "unlabeled": {...}},    # "unlabeled" is ignored
         "test":  {"0": [normal test files], "1": [abnormal test files]}}

Config names map to folders through FOLDERS (rsna -> RSNA, ...); "demo" is the synthetic set that ./scripts/demo.sh
makes (python -m datasets.prepare.demo).
"""
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from utils import seeding
from utils.errors import UserError, unknown
from utils.fingerprint import fingerprint

FOLDERS = {"rsna": "RSNA", "vin": "VinCXR", "brain": "BrainTumor", "lag": "LAG"}  # config name -> folder

# The lists of data.json D2UE reads, (section, key) -> (short name, what the list holds); the test lists in the
# order of Split.test.
LISTS = {("train", "0"): ("train normal", "normal training files"),
         ("test", "0"): ("test normal", "normal test files"),
         ("test", "1"): ("test abnormal", "abnormal test files")}
IGNORED = {("train", "unlabeled")}
SHOWN = 5  # how many file names an error message lists
MIN_TRAIN_BATCHES = 2  # Data.holdout may not leave fewer training images than this many batches of Solver.bs
MIN_REFERENCE = 4  # a held-out reference is split in two halves, and a spread needs two images


def dataset_dir(root, dataset) -> Path:
    """The folder of a data set given its config name."""
    root = Path(root)
    directory = root / FOLDERS.get(dataset, dataset)
    if dataset == "demo" and not directory.is_dir():
        raise UserError(f"data set folder {directory} does not exist; make the demo data with ./scripts/demo.sh or "
                        f"python -m datasets.prepare.demo {directory}")
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist; set Data.root=... to the folder holding your data sets")
    if not directory.is_dir():
        known = ", ".join(f"{name} ({folder})" for name, folder in FOLDERS.items())
        raise UserError(f"data set folder {directory} does not exist; put the {dataset} data there "
                        f"or set Data.dataset to one of: {known}, demo")
    return directory


@dataclass(frozen=True)
class Split:
    directory: Path
    train: list[str]        # normal training files, relative to <directory>/images
    test: list[str]         # test normal files first, then abnormal
    test_labels: list[int]  # 0 = normal, 1 = abnormal, aligned with test
    has_masks: bool         # <directory>/masks exists

    @property
    def lists(self) -> dict:
        """The three lists of data.json again, {(section, key): [files]}, e.g. for datasets.benchmark.describe."""
        return {("train", "0"): self.train,
                **{("test", str(label)): [name for name, own in zip(self.test, self.test_labels) if own == label]
                   for label in (0, 1)}}


def read_data_json(directory) -> dict:
    """The parsed data.json of a data set folder; a missing folder or file, or bad JSON, is a UserError."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"data set folder {directory} does not exist")
    path = directory / "data.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist; every data set folder needs a data.json listing its splits")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None


def _unknown(key, valid):
    return unknown("key", key, valid, quote=json.dumps, list_valid=False)


def parse_lists(data, source="data.json"):
    """Validate the schema of data.json; returns ({(section, key): [files]}, [problems]).

    Every problem is one line naming the key; lists that are valid are returned even when others are not,
    so that datasets.check can go on and report everything at once.
    """
    lists, problems = {}, []
    if not isinstance(data, dict):
        return lists, [f"{source}: the top level must be an object with keys \"train\" and \"test\""]
    sections = {section for section, _ in LISTS}
    problems += [f"{source}: {_unknown(key, sections)} at the top level" for key in data if key not in sections]
    for section in sorted(sections):
        keys = [key for sec, key in [*LISTS, *IGNORED] if sec == section]
        if section not in data:
            problems.append(f"{source}: \"{section}\" is missing")
            continue
        if not isinstance(data[section], dict):
            problems.append(f"{source}: \"{section}\" must be an object with keys {', '.join(map(json.dumps, keys))}")
            continue
        problems += [f"{source}: {_unknown(key, keys)} in \"{section}\""
                     for key in data[section] if key not in keys]
    for (section, key), (_, what) in LISTS.items():
        content = data.get(section)
        if not isinstance(content, dict):
            continue
        name = f"{section}.\"{key}\""
        if key not in content:
            problems.append(f"{source}: {name} is missing; it must list the {what}")
        elif not isinstance(content[key], list):
            problems.append(f"{source}: {name} must be a list of file names, got {type(content[key]).__name__}")
        elif not all(isinstance(f, str) for f in content[key]):
            bad = next(f for f in content[key] if not isinstance(f, str))
            problems.append(f"{source}: {name} must hold file names (strings), found {json.dumps(bad)}")
        elif not content[key]:
            problems.append(f"{source}: {name} is empty; it must list the {what}")
        else:
            lists[section, key] = content[key]
    return lists, problems


def overlaps(lists) -> list[str]:
    """Files listed in two splits: train vs test is leakage, test normal vs abnormal is a label conflict."""
    problems = []
    pairs = [(a, b) for i, a in enumerate(LISTS) for b in list(LISTS)[i + 1:] if a in lists and b in lists]
    for a, b in pairs:
        both = sorted(set(lists[a]) & set(lists[b]))
        if both:
            kind = "leakage" if "train" in (a[0], b[0]) else "label conflict"
            problems.append(f"{kind}: {len(both)} files are listed in both {a[0]}.\"{a[1]}\" and {b[0]}.\"{b[1]}\", "
                            f"e.g. {', '.join(both[:SHOWN])}")
    return problems


def listed_twice(lists) -> list[str]:
    """Files listed twice in one list: Data.holdout splits train by position, so a file twice there could be
    trained on and be the normal reference at once."""
    problems = []
    for (section, key), files in lists.items():
        counts = Counter(files)
        twice = [name for name in dict.fromkeys(files) if counts[name] > 1]
        if twice:
            more = f" (and {len(twice) - 1} more, e.g. {', '.join(twice[1:SHOWN])})" if len(twice) > 1 else ""
            problems.append(f"{twice[0]} is listed twice in {section}.\"{key}\"{more}; list each file once")
    return problems


def missing_files(directory, files) -> list[str]:
    images = Path(directory) / "images"
    return [name for name in dict.fromkeys(files) if not (images / name).is_file()]


def read_split(directory) -> Split:
    """Read and validate <directory>/data.json; any problem is a UserError naming it."""
    directory = Path(directory)
    lists, problems = parse_lists(read_data_json(directory), directory / "data.json")
    problems += listed_twice(lists) + overlaps(lists)
    if problems:
        more = f" (and {len(problems) - 1} more problems; run python -m datasets.check {directory})"
        raise UserError(problems[0] + (more if len(problems) > 1 else ""))
    train, normal, abnormal = (lists[key] for key in LISTS)
    missing = missing_files(directory, train + normal + abnormal)
    if missing:
        raise UserError(f"{len(missing)} files listed in {directory / 'data.json'} are missing from "
                        f"{directory / 'images'}, e.g. {', '.join(missing[:SHOWN])}")
    return Split(directory=directory, train=list(train), test=normal + abnormal,
                 test_labels=[0] * len(normal) + [1] * len(abnormal),
                 has_masks=(directory / "masks").is_dir())


def hold_out(files, share, seed, batch_size) -> tuple[list, list]:
    """(training files, reference files): round(share x n) of the normal training files, drawn by `seed`, are held
    out of training as the normal reference; both lists keep data.json's order. share 0 holds out nothing."""
    count = round(share * len(files))
    if share and count < MIN_REFERENCE:
        raise UserError(f"Data.holdout={share} holds out {count} of {len(files)} normal training images; a reference "
                        f"needs at least {MIN_REFERENCE}: raise Data.holdout or set it to 0")
    if share and len(files) - count < MIN_TRAIN_BATCHES * batch_size:
        raise UserError(f"Data.holdout={share} leaves {len(files) - count} of {len(files)} normal training images to "
                        f"train on, fewer than {MIN_TRAIN_BATCHES} batches of Solver.bs={batch_size}; lower "
                        "Data.holdout")
    held = set(torch.randperm(len(files), generator=seeding.generator(seed, 0, "holdout"))[:count].tolist())
    return ([name for i, name in enumerate(files) if i not in held],
            [name for i, name in enumerate(files) if i in held])


@dataclass(frozen=True)
class TrainingSet:
    """A run's normal training files as Data.holdout splits them, derived once (training_set): the files trained on,
    decoded on first use, and the files held out as its normal reference."""
    split: Split
    files: list[str]     # trained on
    held_out: list[str]  # the normal reference; empty: the reference is the training images themselves (in-sample)
    img_size: int
    workers: int | None

    @classmethod
    def of(cls, split, cfg) -> "TrainingSet":
        files, held_out = hold_out(split.train, cfg.Data.holdout, cfg.Solver.seed, cfg.Solver.bs)
        return cls(split, files, held_out, cfg.Data.img_size, cfg.Exp.workers or None)

    @cached_property
    def images(self) -> torch.Tensor:
        """uint8 (N, 1, S, S) of `files`."""
        return load_images(self.split.directory, self.files, self.img_size, self.workers)

    @cached_property
    def fingerprint(self) -> str:
        """The identity of `images` (a grid's shared learners are keyed by it, utils/grid/sharing.py)."""
        return fingerprint([self.images])

    def reference(self) -> tuple[list, bool, torch.Tensor]:
        """(files, in_sample, uint8 images) of the run's normal reference (utils/method/reference.py)."""
        if self.held_out:
            return self.held_out, False, load_images(self.split.directory, self.held_out, self.img_size, self.workers)
        return self.files, True, self.images


def training_set(cfg) -> TrainingSet:
    """The training set of the run `cfg` describes: its data set's split read and checked, Data.holdout applied."""
    return TrainingSet.of(read_split(dataset_dir(cfg.Data.root, cfg.Data.dataset)), cfg)


def reference_images(split, cfg) -> tuple[list, bool, torch.Tensor]:
    """(files, in_sample, uint8 images) of a run's normal reference, from its data set's split."""
    return TrainingSet.of(split, cfg).reference()


def open_gray(path) -> Image.Image:
    """Decode an image file to 8-bit grayscale; an unreadable file is a UserError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I", "F") or image.mode.startswith("I;16"):
                # High bit depth (16-bit PNG, float TIFF): min-max to 8 bit, as for DICOM; convert("L") would clip.
                pixels = np.asarray(image, dtype=np.float64)
                low, high = pixels.min(), pixels.max()
                scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
                return Image.fromarray(np.round(scaled).astype(np.uint8))
            return image.convert("L")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot read image {path}: {err}; replace or remove the file "
                        f"(python -m datasets.check lists every unreadable file)") from None


def resize_gray(gray, img_size, resample=Image.Resampling.BILINEAR) -> np.ndarray:
    """uint8 (S, S): a grayscale image resized to S x S, as every model input (bilinear) and mask (nearest) is."""
    return np.asarray(gray.resize((img_size, img_size), resample))


def usable_cpus() -> int:
    """The CPUs this process may run on (Slurm's --cpus-per-task, taskset), which os.cpu_count() does not see."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cpus or 1


def decode_threads() -> int:
    """How many threads decode images (PIL releases the GIL while decoding): at most one per usable CPU."""
    return min(16, usable_cpus())


def _load(paths, img_size, resample, workers, what):
    def decode(path):
        return resize_gray(open_gray(path), img_size, resample)

    workers = workers or decode_threads()
    show = len(paths) >= 500 and os.isatty(2)
    with ThreadPoolExecutor(workers) as pool:
        arrays = list(tqdm(pool.map(decode, paths), total=len(paths), desc=f"loading {what}",
                           disable=not show, leave=False))
    if not arrays:
        return torch.zeros(0, 1, img_size, img_size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).unsqueeze(1)


def load_images(directory, files, img_size, workers=None) -> torch.Tensor:
    """uint8 (N, 1, S, S): <directory>/images/<file>, grayscale, bilinear resize to S x S."""
    paths = [Path(directory) / "images" / name for name in files]
    return _load(paths, img_size, Image.Resampling.BILINEAR, workers, "images")


def load_masks(directory, files, img_size, workers=None) -> torch.Tensor:
    """bool (N, 1, S, S): <directory>/masks/<file>, nearest resize, non-zero = abnormal; no mask file = all False."""
    masks = torch.zeros(len(files), 1, img_size, img_size, dtype=torch.bool)
    paths = [Path(directory) / "masks" / name for name in files]
    present = [i for i, path in enumerate(paths) if path.is_file()]
    if present:
        masks[present] = _load([paths[i] for i in present], img_size, Image.Resampling.NEAREST, workers, "masks") > 0
    return masks
