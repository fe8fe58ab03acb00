"""What the studies' analyses share: the unit of independence of a run, paired differences with their 95% t interval
over units, Markdown tables, and reading and writing a study's files.

The analyses read their archived records alone and import nothing of the method's code (utils.method): the records
hold what the commit that ran the study computed, and the method has moved on since.
"""
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from datasets.prepare.fashion_mnist import parse_set_name, set_name
from utils.atomic import atomic_write_text
from utils.errors import UserError

SCORES = ("rec", "unc", "dsu")  # the published image scores, in every results.json
KINDS = (None, "semantic", "local")  # all sets, or the sets of one anomaly_kind


# ---------------------------------------------------------------- units

def training_set(dataset: str) -> str:
    """The data set whose training images a data set has: FMNIST_local_cC trains on FMNIST_cC's (byte-identical)
    images; any other set on its own."""
    parsed = parse_set_name(dataset)
    return set_name(parsed[0]) if parsed else dataset


def anomaly_kind(dataset: str) -> str:
    """"local" for a set of local defects (FMNIST_local_cC, with pixel masks), "semantic" for any other set."""
    parsed = parse_set_name(dataset)
    return parsed[1] if parsed else "semantic"


def unit(run) -> tuple:
    """The unit of independence of a run's settings: (training set, seed). Byte-identical training images and
    deterministic training give a semantic set and its local twin the same learners; only the test sets differ."""
    return training_set(run["dataset"]), run["seed"]


# ---------------------------------------------------------------- differences over units

def mean_interval(values, level=0.95) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of independent values with the t interval; low and high are None with fewer than two."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if values.size < 2:
        return mean, None, None
    half = stats.t.ppf((1 + level) / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return mean, float(mean - half), float(mean + half)


def over_units(units) -> dict | None:
    """{unit: [differences]} -> the mean over units of each unit's mean, its 95% t interval ("low", "high"; None
    with one unit) and the unit count "n"; None without units."""
    if not units:
        return None
    mean, low, high = mean_interval([np.mean(values) for values in units.values()])
    return {"mean": mean, "low": low, "high": high, "n": len(units)}


def paired_over_units(ours, theirs) -> dict | None:
    """ours, theirs: {(data set, seed): value}. The differences ours - theirs of the keys both have, averaged within
    each unit (training set, seed), then over_units; "pairs" counts the matched keys. None without pairs."""
    units = defaultdict(list)
    pairs = sorted(ours.keys() & theirs.keys(), key=str)
    for dataset, seed in pairs:
        units[unit({"dataset": dataset, "seed": seed})].append(ours[dataset, seed] - theirs[dataset, seed])
    return {**over_units(units), "pairs": len(pairs)} if pairs else None


def confirming_runs(records, choosing, confirming) -> tuple[int, int]:
    """(archived, expected) runs of the confirming seeds: each (data set, latent size) the choosing seeds ran, once
    per confirming seed. A decision waits until they are all there."""
    design = {(r["run"]["dataset"], r["run"].get("ls")) for r in records if r["run"]["seed"] in choosing}
    found = {(r["run"]["dataset"], r["run"].get("ls"), r["run"]["seed"]) for r in records
             if r["run"]["seed"] in confirming}
    return len(found & {(*cell, seed) for cell in design for seed in confirming}), len(design) * len(confirming)


def interval_text(difference) -> str:
    """"+0.012 [-0.004, +0.028]", or "+0.012" without an interval."""
    if difference["low"] is None:
        return f"{difference['mean']:+.3f}"
    return f"{difference['mean']:+.3f} [{difference['low']:+.3f}, {difference['high']:+.3f}]"


def shown(difference) -> str:
    """"+0.012 [-0.004, +0.028] (n=3)" (n: the units), or "-" for no difference."""
    return "-" if difference is None else f"{interval_text(difference)} (n={difference['n']})"


# ---------------------------------------------------------------- tables and files

def markdown_table(header, rows) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def number(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def read_record(path) -> dict:
    """One archived record (a JSON object); a file that is not one is a UserError that says how to get it back."""
    try:
        record = json.loads(Path(path).read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise UserError(f"archive file {path} is unreadable ({err}); take it back from git "
                        "(git checkout -- PATH) or delete it and archive its run again") from None
    return record


def write_text(path, text) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def rar_results(rar_records, run) -> dict | None:
    """The results.json of the RAR study's run (30 epochs, no holdout) of the same data set, backbone, setting and
    seed as `run`, from that study's records (studies/rar/records); None when it has none or rar_records is None."""
    if rar_records is None:
        return None
    bn = str(bool(run.get("precise_bn"))).lower()
    name = f"{run['dataset']}_{run['network']}_precise_bn{bn}_Lambda{run['Lambda']:g}_s{run['seed']}"
    for grid in ("rar_screen", "rar_confirm"):
        path = Path(rar_records) / grid / f"{name}.json"
        if path.is_file():
            return read_record(path)["results"]
    return None
