"""The Med-AD benchmark's split files (datasets/splits/), and telling whether a data set folder is on one of them.

    describe(lists)  ->  "RSNA: the Med-AD benchmark split"
                     or  "custom split, closest to the Med-AD RSNA split: 2 moved from train normal to test normal
                          (a.png, b.png)"

Only the three lists D2UE uses are compared: train "0", test "0" and test "1" (`train.unlabeled` is not).
Files are compared by name without the extension, so a Brain Tumor set whose JPEGs were saved as PNGs is still
recognised; the split is recognised by its content, whatever the folder is called.
"""
import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from datasets.medad import FOLDERS, LISTS
from utils.errors import UserError

SPLIT_FOLDER = Path(__file__).with_name("splits")
BENCHMARKS = tuple(FOLDERS.values())  # datasets/splits/<FOLDER>.json
# The image files prepare and predict read; name_stem strips these suffixes.
DICOM_SUFFIXES = {".dcm", ".dicom"}
PICTURE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
IMAGE_SUFFIXES = DICOM_SUFFIXES | PICTURE_SUFFIXES
SHOWN = 3  # file names shown per kind of difference


def name_stem(name):
    """`x.png`, `x.dcm`, `images/x.jpg` -> `x`; unknown suffixes are kept (ids may contain dots)."""
    path = PurePosixPath(str(name).replace("\\", "/"))
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else path.name


def read_lists(path, what=None):
    """The three lists of a split file shaped like data.json; anything else is a UserError naming the file."""
    what = what or f"split file {path}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} does not exist") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{what} is not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} must be a JSON object shaped like data.json")
    lists = {}
    for section, label in LISTS:
        names = data.get(section, {}).get(label) if isinstance(data.get(section), dict) else None
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise UserError(f"{what} has no list of file names at [{section!r}][{label!r}]")
        lists[section, label] = names
    return lists


@functools.cache
def load(name):
    """The three lists of a shipped benchmark split, e.g. load("RSNA")[("train", "0")] (3851 names)."""
    if name not in BENCHMARKS:
        raise UserError(f"no shipped benchmark split {name!r}; the benchmark has {', '.join(BENCHMARKS)}")
    return read_lists(SPLIT_FOLDER / f"{name}.json", f"shipped split file {SPLIT_FOLDER / name}.json")


def _placements(lists):
    """stem -> the sorted keys of the lists that hold it, and the first name it was listed under."""
    keys, names = {}, {}
    for key in LISTS:
        for name in lists.get(key, []):
            stem = name_stem(name)
            keys.setdefault(stem, set()).add(key)
            names.setdefault(stem, name)
    return {stem: tuple(sorted(where, key=list(LISTS).index)) for stem, where in keys.items()}, names


@functools.cache
def _benchmark_placements(name):
    return _placements(load(name))


def _where(keys):
    return " + ".join(LISTS[key][0] for key in keys)


def _some(names):
    names = sorted(names)
    return ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")


@dataclass(frozen=True)
class SplitMatch:
    """How a folder's lists compare with the closest shipped benchmark split (None: no file in common)."""
    benchmark: str | None
    missing: list[str] = field(default_factory=list)   # in the benchmark's lists, in none of the folder's
    added: list[str] = field(default_factory=list)     # in the folder's lists, in none of the benchmark's
    moved: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (benchmark lists, folder lists) -> names
    repeated: list[str] = field(default_factory=list)  # listed more than once in one of the folder's lists

    @property
    def exact(self):
        return self.benchmark is not None and not (self.missing or self.added or self.moved or self.repeated)

    @property
    def label(self):
        """What results.json records: "benchmark RSNA" or "custom"."""
        return f"benchmark {self.benchmark}" if self.exact else "custom"

    def __str__(self):
        if self.exact:
            return f"{self.benchmark}: the Med-AD benchmark split"
        if self.benchmark is None:
            return f"custom split: no file in common with the Med-AD benchmark splits ({', '.join(BENCHMARKS)})"
        total = sum(len(names) for names in load(self.benchmark).values())
        parts = [f"{len(names)} moved from {source} to {target} ({_some(names)})"
                 for (source, target), names in sorted(self.moved.items())]
        if self.missing:
            parts.append(f"{len(self.missing)} of its {total} files missing ({_some(self.missing)})")
        if self.added:
            parts.append(f"{len(self.added)} added ({_some(self.added)})")
        if self.repeated:
            parts.append(f"{len(self.repeated)} listed twice ({_some(self.repeated)})")
        return f"custom split, closest to the Med-AD {self.benchmark} split: " + "; ".join(parts)


def describe(lists) -> SplitMatch:
    """Compare a data set's lists {(section, key): [file names]} with the shipped split it shares most files with."""
    placements, names = _placements(lists)
    shared = {name: len(placements.keys() & _benchmark_placements(name)[0]) for name in BENCHMARKS}
    closest = max(BENCHMARKS, key=shared.get)
    if not shared[closest]:
        return SplitMatch(None)
    expected, expected_names = _benchmark_placements(closest)
    moved = {}
    for stem in placements.keys() & expected.keys():
        if placements[stem] != expected[stem]:
            moved.setdefault((_where(expected[stem]), _where(placements[stem])), []).append(names[stem])
    repeated = set()
    for key in LISTS:
        counts = Counter(name_stem(name) for name in lists.get(key, []))
        repeated |= {names[stem] for stem, count in counts.items() if count > 1}
    return SplitMatch(
        closest,
        missing=sorted(expected_names[stem] for stem in expected.keys() - placements.keys()),
        added=sorted(names[stem] for stem in placements.keys() - expected.keys()),
        moved={where: sorted(moved_names) for where, moved_names in moved.items()},
        repeated=sorted(repeated))
