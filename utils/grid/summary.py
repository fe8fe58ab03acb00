"""Gather every run's results.json under a folder into one table: mean and std over seeds per config and score.

Usage: python eval.py --summary ROOT    (prints the Markdown table; writes ROOT/summary.md and ROOT/summary.csv)

Runs on another split are another config: the Markdown table marks rows that are not on a Med-AD benchmark split
("custom split"), or whose results.json has no "split" record ("split not recorded").
"""
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from utils.atomic import atomic_write_text
from utils.errors import UserError
from utils.method.dsu import SCORES
from utils.method.reference import IMAGE_SCORES
from utils.run import config

METRICS = ["auc", "ap", "fpr05", "tpr05", "fdp10", "power10", "pixel_auroc", "pixel_ap",
           "pixel_best_dice"]
REQUIRED_METRICS = ["auc", "ap"]
# the entries of a results.json that are not scores
NOT_SCORES = ("run", "source", "diagnostics", "reference", "ensemble_size", "timing")
NOT_IDENTITY = {*map(config.bare, config.REPLICATE), "out_dir"}  # replicates of one experiment, and where it ran
SHOWN_ELSEWHERE = {"dataset", "network", "split"}  # identity keys with a place of their own in the table
HEADERS = {"auc": "AUC", "ap": "AP", "fpr05": "FPR at p<=0.05", "tpr05": "TPR at p<=0.05",
           "fdp10": "FDP of BH at 0.1", "power10": "power of BH at 0.1", "pixel_auroc": "pixel AUROC",
           "pixel_ap": "pixel AP", "pixel_best_dice": "pixel best Dice"}


def collect(root) -> list:
    """Every readable results.json under root (recursively, in sorted path order).

    Each entry is the file's dict plus "source" (its path). Unreadable or malformed files are skipped with a
    warning line on stderr.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"results folder {root} does not exist; pass the folder that holds your runs")
    results = []
    for path in sorted(root.rglob("results.json")):
        try:
            result = json.loads(path.read_text())
            _validate(result)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as err:
            print(f"warning: skipping {path}: {err}", file=sys.stderr)
            continue
        result["source"] = str(path)
        results.append(result)
    return results


def summarize(results) -> list:
    """One row per (config, score) with the number of seeds, the seeds, and mean and sample std of each metric.

    The config is every key of "run" except seed and out_dir. "config" names the keys beyond dataset and
    network whose values differ between the configs present (empty when none do). A pixel metric is reported
    only when every run of the row has it.
    """
    groups = {}
    for result in results:
        identity = _identity(result["run"])
        for score, metrics in result.items():
            if score not in NOT_SCORES:
                groups.setdefault((identity, score), []).append((result["run"].get("seed"), metrics))

    varying = _varying_keys([dict(identity) for identity, _ in groups])
    rows, warned = [], set()
    for (identity, score), runs in groups.items():
        config = {key: json.loads(value) for key, value in identity}
        row = {
            "dataset": config.get("dataset", ""),
            "network": config.get("network", ""),
            "split": config.get("split"),  # "benchmark RSNA", "custom", or None when not recorded
            "config": ", ".join(f"{key}={config.get(key)}" for key in varying),
            "score": score,
            "n_seeds": len(runs),
            "seeds": sorted((seed for seed, _ in runs), key=_seed_rank),
        }
        repeated = sorted({seed for seed in row["seeds"] if row["seeds"].count(seed) > 1}, key=_seed_rank)
        if repeated and identity not in warned:
            warned.add(identity)
            print(f"warning: {row['dataset']} {row['network']} {row['config']}: seed(s) {repeated} appear in more "
                  "than one run; each run counts once", file=sys.stderr)
        for metric in METRICS:
            if all(metric in metrics for _, metrics in runs):
                values = np.array([metrics[metric] for _, metrics in runs], dtype=np.float64)
                row[f"{metric}_mean"] = float(values.mean())
                row[f"{metric}_std"] = float(values.std(ddof=1)) if values.size > 1 else 0.0
        rows.append(row)
    rows.sort(key=lambda row: (str(row["dataset"]), str(row["network"]), str(row["split"]), row["config"],
                               _score_rank(row["score"])))
    return rows


def write_summary(root, results=None, wide=False):
    """Write root/summary.md and root/summary.csv from the results.json files under root (or from `results`);
    returns (md_path, csv_path). Long: one row per config and score. Wide, the paper's shape: one row per config,
    the scores side by side."""
    root = Path(root)
    rows = summarize(collect(root) if results is None else results)
    if not rows:
        raise UserError(f"no readable results.json under {root}; evaluate a run first (it writes results.json)")
    if wide:
        rows = widen(rows)
    md_path, csv_path = root / "summary.md", root / "summary.csv"
    atomic_write_text(md_path, markdown_wide(rows) if wide else markdown_table(rows))
    keys = ["dataset", "network", "split", "config", *([] if wide else ["score"]), "n_seeds", "seeds"]
    columns = keys + [column for column in _metric_columns(wide) if any(column in row for row in rows)]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "split": row["split"] or "", "seeds": " ".join(str(seed) for seed in row["seeds"])})
    atomic_write_text(csv_path, text.getvalue())
    return md_path, csv_path


def widen(rows) -> list:
    """Long rows (one per config and score) -> one row per config with `<score>_<metric>_mean|std` columns."""
    wide = {}
    for row in rows:
        key = (row["dataset"], row["network"], row["split"], row["config"])
        target = wide.setdefault(key, {name: row[name] for name in ("dataset", "network", "split", "config",
                                                                     "n_seeds", "seeds")})
        target["n_seeds"] = max(target["n_seeds"], row["n_seeds"])
        for column, value in row.items():
            if column.endswith(("_mean", "_std")):
                target[f"{row['score']}_{column}"] = value
    return list(wide.values())


def _metric_columns(wide):
    columns = [f"{metric}_{stat}" for metric in METRICS for stat in ("mean", "std")]
    return [f"{score}_{column}" for score in SCORES for column in columns] if wide else columns


def _markdown(rows, columns, cells_of) -> str:
    """A Markdown table: the run's columns (dataset, network, config when any row has one), `columns`, the seeds, then
    what cells_of(row) gives for each row."""
    show_config = any(row["config"] for row in rows)
    header = ["dataset", "network", *(["config"] if show_config else []), *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["dataset"]) + _split_mark(row["split"]), str(row["network"]),
                 *([row["config"]] if show_config else []), *cells_of(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _seeds(row) -> str:
    return f"{row['n_seeds']} ({', '.join(str(seed) for seed in row['seeds'])})"


def _mean_std(row, key) -> str:
    return "-" if row.get(f"{key}_mean") is None else f"{row[f'{key}_mean']:.3f} ± {row[f'{key}_std']:.3f}"


def markdown_wide(rows) -> str:
    """Wide rows as the paper's table: image AUC and AP of rec, unc and dsu as `mean ± std`."""
    pairs = [(score, metric) for score in SCORES for metric in REQUIRED_METRICS]
    return _markdown(rows, ["seeds", *(f"{score} {HEADERS[metric]}" for score, metric in pairs)],
                     lambda row: [_seeds(row), *(_mean_std(row, f"{score}_{metric}") for score, metric in pairs)])


def markdown_table(rows) -> str:
    """Rows from summarize() as a Markdown table, metrics as `mean ± std`."""
    metrics = [metric for metric in METRICS if any(f"{metric}_mean" in row for row in rows)]
    return _markdown(rows, ["score", "seeds", *(HEADERS[metric] for metric in metrics)],
                     lambda row: [row["score"], _seeds(row), *(_mean_std(row, metric) for metric in metrics)])


def _validate(result):
    if not isinstance(result, dict) or not isinstance(result.get("run"), dict):
        raise ValueError('no "run" section')
    scores = [key for key in result if key not in NOT_SCORES]
    if not scores:
        raise ValueError("no scores")
    for score in scores:
        metrics = result[score]
        if not isinstance(metrics, dict):
            raise ValueError(f'"{score}" is not a table of metrics')
        for metric in REQUIRED_METRICS:
            if metric not in metrics:
                raise ValueError(f'"{score}" has no "{metric}"')
        for metric in METRICS:
            value = metrics.get(metric, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f'"{score}.{metric}" is not a finite number: {value!r}')


def _identity(run):
    # JSON text makes any value (lists, nested dicts) hashable and comparable. A removed option at the behaviour the
    # project kept (results.json files before it left) is the same experiment as a run without it.
    kept = {config.bare(name): value for name, value in config.REMOVED.items()}
    return tuple(sorted((key, json.dumps(value, sort_keys=True)) for key, value in run.items()
                        if key not in NOT_IDENTITY and not (key in kept and value == kept[key])))


def _split_mark(split):
    if isinstance(split, str) and split.startswith("benchmark "):
        return ""
    return " (split not recorded)" if split is None else " (custom split)"


def _varying_keys(configs):
    keys = sorted({key for config in configs for key in config} - SHOWN_ELSEWHERE)
    return [key for key in keys if len({json.dumps(config.get(key), sort_keys=True) for config in configs}) > 1]


def _seed_rank(seed):
    is_number = isinstance(seed, (int, float)) and not isinstance(seed, bool)
    return (0, seed, "") if is_number else (1, 0, str(seed))


def _score_rank(score):
    return (IMAGE_SCORES.index(score), "") if score in IMAGE_SCORES else (len(IMAGE_SCORES), score)
