"""Check a Med-AD data set folder before training on it.

    python -m datasets.check ROOT/DATASET

Prints the split counts, whether the split is one of the Med-AD benchmark's (datasets/splits/) or how it differs
from the closest one, and image size statistics, then every problem as one line: schema errors in data.json,
missing or unreadable images (every image is decoded), file names listed twice, identical file contents, and files
listed in both train and test. Exit code 0 when clean, 1 when problems were found, 2 when the folder or its
data.json cannot be read at all.
"""
import hashlib
import io
import os
import statistics
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from datasets.benchmark import describe
from datasets.medad import LISTS, decode_threads, missing_files, overlaps, parse_lists, read_data_json
from utils.errors import ArgumentParser, cli

SHOWN = 20  # problem lines per kind; the rest are counted


def inspect(path):
    """(sha1 of the bytes, (width, height), mode) of an image file, or the error message when it cannot be decoded."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every pixel, so truncated files are caught too
            return hashlib.sha1(data).hexdigest(), image.size, image.mode
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return str(err) or type(err).__name__


def _inspect_all(paths):
    show = len(paths) >= 500 and os.isatty(2)
    with ThreadPoolExecutor(decode_threads()) as pool:
        return list(tqdm(pool.map(inspect, paths), total=len(paths), desc="decoding", disable=not show,
                         leave=False))


def _report(problems, kind, items):
    problems += [f"{kind}: {item}" for item in items[:SHOWN]]
    if len(items) > SHOWN:
        problems.append(f"{kind}: ... and {len(items) - SHOWN} more")


def _spread(values):
    return f"{min(values)}/{statistics.median(values):g}/{max(values)}"


def check(directory) -> list[str]:
    """Print the summary of a data set folder and return its problems, one line each."""
    directory = Path(directory)
    lists, problems = parse_lists(read_data_json(directory), directory / "data.json")
    for (section, key), (_, what) in LISTS.items():
        files = lists.get((section, key), [])
        print(f"{section}.\"{key}\" ({what}): {len(files)}")
        twice = sorted(name for name, count in Counter(files).items() if count > 1)
        _report(problems, f"listed twice in {section}.\"{key}\"", twice)
    print(f"split: {describe(lists)}")
    problems += overlaps(lists)

    split_of = defaultdict(set)  # file -> sections that list it
    for (section, _), files in lists.items():
        for name in files:
            split_of[name].add(section)
    missing = missing_files(directory, list(split_of))
    _report(problems, f"missing from {directory / 'images'}", missing)

    missing = set(missing)
    present = [name for name in split_of if name not in missing]
    results = _inspect_all([directory / "images" / name for name in present])
    by_digest, sizes, modes, unreadable = defaultdict(list), [], Counter(), []
    for name, result in zip(present, results):
        if isinstance(result, str):
            unreadable.append(f"{name}: {result}")
            continue
        digest, size, mode = result
        by_digest[digest].append(name)
        sizes.append(size)
        modes[mode] += 1
    _report(problems, "unreadable image", unreadable)
    duplicates = [group for group in by_digest.values() if len(group) > 1]
    leaked = [g for g in duplicates if {"train", "test"} <= set().union(*(split_of[name] for name in g))]
    _report(problems, "identical content in train and test (leakage)", [", ".join(g) for g in leaked])
    _report(problems, "identical content", [", ".join(g) for g in duplicates if g not in leaked])

    if sizes:
        print(f"image size (min/median/max): width {_spread([w for w, _ in sizes])}, "
              f"height {_spread([h for _, h in sizes])}; most common {Counter(sizes).most_common(1)[0][0]}")
        print("image modes: " + ", ".join(f"{mode} {count}" for mode, count in modes.most_common()))
    if (directory / "masks").is_dir():
        abnormal = lists.get(("test", "1"), [])
        with_mask = sum((directory / "masks" / name).is_file() for name in abnormal)
        print(f"masks: {with_mask} of {len(abnormal)} abnormal test images have one")
    if (directory / "images").is_dir():
        unlisted = sum(1 for entry in os.scandir(directory / "images") if entry.name not in split_of)
        if unlisted:
            print(f"note: {unlisted} files in {directory / 'images'} are not listed in data.json (ignored)")
    return problems


@cli
def main(argv=None):
    parser = ArgumentParser(prog="python -m datasets.check", description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="a data set folder holding images/ and data.json, e.g. Med-AD/RSNA")
    args = parser.parse_args(argv)
    problems = check(args.folder)
    for line in problems:
        print(line)
    print(f"problems found in {args.folder} (listed above)" if problems else f"{args.folder}: no problems found")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
