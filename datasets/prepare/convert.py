"""Convert one raw data set into <out>/<FOLDER>: its images, then its data.json.

Conversion, the benchmark's own rule, so that the prepared images are those every paper on the benchmark used. DICOM
(rsna, vin) -> `<stem>.png`, 512x512 8-bit (the rule: datasets/dicom.py). JPEG folders (brain, lag), benchmark split
or seeded: the original files are copied byte for byte under their own names (after checking that they decode), as
the benchmark did; the loader makes them 8-bit grayscale. When two raw files would get the same output name, the class
folder name (DICOM: the parent folder name) is prefixed. Files are converted in a process pool; outputs that already
exist are skipped, each file is written under a temporary name and renamed, and data.json is written last, so a killed
run is resumed by running the same command again. Unreadable files are listed one per line at the end, and then the
run fails without writing data.json.
"""
import contextlib
import json
import multiprocessing
import shutil
import signal
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from datasets import benchmark
from datasets.dicom import dicom_to_array
from datasets.medad import LISTS, usable_cpus
from datasets.prepare.raw import DATASETS, find_raw_images, label_dicoms, output_names, searched, some, warn
from datasets.prepare.split import SEEDED, match_split, seeded_split
from utils.atomic import atomic_write, atomic_write_text, remove_leftovers
from utils.errors import UserError


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
    workers = usable_cpus() if workers is None else workers
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
    remove_leftovers(image_folder)
    entries = [entry for key in LISTS for entry in chosen[key]]
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
        print(f"split: {benchmark.describe({key: data[key[0]][key[1]] for key in LISTS})}")
    return data_json
