"""The length study's analysis (README.md beside this file): the gap between Lambda 0 and the published setting
(Lambda 1) at the benchmark's training length, beside the same gap at 30 epochs (the RAR study's runs).

    python -m studies.length.analysis [--runs runs/length] [--study studies/length] [--rar-records studies/rar/records]

With --runs, each evaluated run of the grid is archived first as <study>/records/<run>.json: what the tables need
of its results.json (those runs hold nothing out: the published scores). The tables (<study>/study.md) are made from
the records alone.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from studies.common import (SCORES, anomaly_kind, markdown_table, paired_over_units, rar_results, read_record,
                            shown, write_text)
from utils.errors import ArgumentParser, UserError, cli


def diagnostics_of(results) -> dict:
    """What the tables need of eval's diagnostics: each learner's effective rank of its test features, its error in
    eval mode over train mode on training images (the precise-BN check), and the warnings."""
    diagnostics = results["diagnostics"]
    return {"effective_rank": diagnostics["effective_rank"],
            "eval_over_train": [report["eval_mse"] / report["train_mse"] if report else None
                                for report in diagnostics["learners"]],
            "warnings": diagnostics["warnings"]}


def length_record(results) -> dict:
    """What the length table needs of one run's results.json (those runs hold nothing out: the published scores)."""
    return {"run": results["run"], "diagnostics": diagnostics_of(results),
            "scores": {name: {key: results[name][key] for key in ("auc", "pixel_auroc") if key in results[name]}
                       for name in SCORES}}


def archive_length(runs, records) -> None:
    for results in sorted(Path(runs).glob("*/results.json")):
        write_text(Path(records) / f"{results.parent.name}.json",
                   json.dumps(length_record(json.loads(results.read_text())), indent=1))


def rar_counterpart(rar_records, run) -> dict | None:
    """The RAR study's run of the same data set, backbone, setting and seed (30 epochs), as a length record."""
    results = rar_results(rar_records, run)
    return None if results is None else length_record(results)


def length_markdown(records, rar_records) -> str:
    """Lambda 0 minus Lambda 1 at the benchmark's length against the same at 30 epochs (the RAR study's runs)."""
    by_run = {(r["run"]["dataset"], r["run"]["seed"], float(r["run"]["Lambda"])): r for r in records}
    pairs = [(key[:2], by_run[key], by_run[(*key[:2], 1.0)]) for key in by_run
             if key[2] == 0.0 and (*key[:2], 1.0) in by_run]

    def gap(score, name, long, kind=None):
        ours, theirs = {}, {}
        for key, plain, published in pairs:
            if kind not in (None, anomaly_kind(key[0])):
                continue
            if not long:
                plain, published = rar_counterpart(rar_records, plain["run"]), rar_counterpart(rar_records,
                                                                                              published["run"])
                if plain is None or published is None:
                    continue
            values = plain["scores"][score].get(name), published["scores"][score].get(name)
            if None not in values:
                ours[key], theirs[key] = values
        return paired_over_units(ours, theirs)

    epochs = sorted({r["run"]["num_epoch"] for r in records})
    rows = []
    for score in SCORES:
        for name, kind in (("auc", None), ("auc", "semantic"), ("auc", "local"), ("pixel_auroc", "local")):
            rows.append([f"{score} {'image AUC' if name == 'auc' else 'pixel AUROC'}", kind or "all sets",
                         shown(gap(score, name, False, kind)), shown(gap(score, name, True, kind))])
    lines = ["# The benchmark's length", "",
             f"{len(records)} runs archived ({', '.join(map(str, epochs))} epochs); the 30-epoch runs are the RAR "
             "study's of the same data set, setting and seed. Lambda 0 minus Lambda 1 (published), paired on the data "
             "set, a class's semantic and local set averaged first; mean with its 95% t interval over the classes.", "",
             *markdown_table(["score", "sets", "30 epochs", f"{'/'.join(map(str, epochs))} epochs"], rows), ""]
    rows = []
    for lam in (1.0, 0.0):
        long = [r for r in records if float(r["run"]["Lambda"]) == lam]
        short = [c for c in (rar_counterpart(rar_records, r["run"]) for r in long) if c is not None]
        ranks = [[np.mean(r["diagnostics"]["effective_rank"][1:]) for r in rs] for rs in (short, long)]
        rows.append([f"Lambda {lam:g}", *(f"{np.mean(values):.2f} (n={len(values)})" if values else "-"
                                          for values in ranks)])
    lines += ["Juniors' effective rank of their test features (mean over runs):", "",
              *markdown_table(["setting", "30 epochs", f"{'/'.join(map(str, epochs))} epochs"], rows), ""]
    return "\n".join(lines)


@cli
def main(argv=None):
    parser = ArgumentParser(prog="python -m studies.length.analysis", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", help="the grid folder whose evaluated runs are archived first (runs/length)")
    parser.add_argument("--study", default="studies/length", help="the study's folder: records/ and study.md")
    parser.add_argument("--rar-records", default="studies/rar/records", help="the RAR study's records (30 epochs)")
    args = parser.parse_args(argv)
    records, report = Path(args.study) / "records", Path(args.study) / "study.md"
    if args.runs:
        archive_length(args.runs, records)
    archived = [read_record(path) for path in sorted(records.glob("*.json"))]
    if not archived:
        raise UserError(f"no records in {records}; pass --runs with evaluated runs")
    write_text(report, length_markdown(archived, Path(args.rar_records)))
    print(f"{len(archived)} runs in {records}; tables in {report}")


if __name__ == "__main__":
    main()
