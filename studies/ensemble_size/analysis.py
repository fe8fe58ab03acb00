"""The ensemble-size study's analysis (README.md beside this file): what each score gains from its k-th learner.

    python -m studies.ensemble_size.analysis [--runs runs/ensemble_size runs/ensemble_size_published]
                                             [--study studies/ensemble_size]

With --runs, each evaluated run is archived first as <study>/records/<run>.json: its curve (eval.py's
"ensemble_size": image AUC and AP of rec, unc and dsu, and pixel metrics on the local sets, of the first k learners,
k = 2..K), the learners' effective rank, the seconds each learner trained (metrics.jsonl) and the seconds scoring
took. The tables (<study>/study.md) are made from the records alone: each k minus k = 3, paired on training set and
seed, with 95% t intervals over those units.
"""
import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from studies.common import (SCORES, anomaly_kind, markdown_table, number, paired_over_units, read_record, shown,
                            write_text)
from utils.errors import ArgumentParser, UserError, cli

BASE = 3  # the paper's K: every k is compared with it
KINDS = (("semantic", "auc", "image AUC, semantic sets"), ("local", "auc", "image AUC, local sets"),
         ("local", "pixel_auroc", "pixel AUROC, local sets"))


def epoch_seconds(run_dir) -> dict:
    """{learner: seconds its epochs took} of the learners trained in this run (metrics.jsonl; a learner the run
    took from another has no epochs here)."""
    seconds = defaultdict(float)
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line)
        if record["tag"].startswith("learner") and "epoch_s" in record:
            seconds[int(record["tag"].removeprefix("learner"))] += record["epoch_s"]
    return dict(seconds)


def record_of(run_dir) -> dict:
    """What the tables need of one evaluated run."""
    results = json.loads((Path(run_dir) / "results.json").read_text())
    if "ensemble_size" not in results:
        raise UserError(f"{run_dir}/results.json has no ensemble_size curve; evaluate the run again with this "
                        "commit's eval.py")
    return {"run": results["run"], "curve": results["ensemble_size"],
            "effective_rank": results["diagnostics"]["effective_rank"],
            "train_s": {str(k): v for k, v in epoch_seconds(run_dir).items()}, "timing": results.get("timing")}


def archive(folders, records) -> int:
    count = 0
    for folder in folders:
        for results in sorted(Path(folder).glob("*/results.json")):
            write_text(Path(records) / f"{results.parent.name}.json", json.dumps(record_of(results.parent), indent=1))
            count += 1
    return count


def load_records(records) -> list:
    return [read_record(path) for path in sorted(Path(records).glob("*.json"))]


def setting(record) -> str:
    return "published" if record["run"]["Lambda"] else "recommended"


def values(records, k, score, metric, kind) -> dict:
    """{(data set, seed): the metric of the first k learners} of the runs of that anomaly kind which have it."""
    found = {}
    for record in records:
        run = record["run"]
        entry = record["curve"].get(str(k), {}).get(score, {})
        if anomaly_kind(run["dataset"]) == kind and metric in entry:
            found[run["dataset"], run["seed"]] = entry[metric]
    return found


def sizes(records) -> list:
    return sorted({int(k) for record in records for k in record["curve"]})


def gain_table(records, kind, metric) -> list:
    """Rows k: each score's metric of the first k learners minus that of the first BASE, over units."""
    rows = []
    for k in sizes(records):
        if k == BASE:
            continue
        rows.append([str(k), *(shown(paired_over_units(values(records, k, score, metric, kind),
                                                      values(records, BASE, score, metric, kind)))
                               for score in SCORES)])
    return markdown_table(["k", *(f"{score} (k - {BASE})" for score in SCORES)], rows)


def level_table(records, kind, metric) -> list:
    """Rows k: each score's mean metric over the runs, for orientation."""
    rows = []
    for k in sizes(records):
        means = [np.mean(list(found.values())) if (found := values(records, k, score, metric, kind)) else None
                 for score in SCORES]
        rows.append([str(k), *(number(mean) for mean in means)])
    return markdown_table(["k", *SCORES], rows)


def rank_table(by_setting) -> list:
    """Each learner's effective rank on the test images (mean over a setting's runs): collapse shows as ~1."""
    count = max(len(record["effective_rank"]) for records in by_setting.values() for record in records)
    rows = []
    for name, records in by_setting.items():
        ranks = [np.mean([r["effective_rank"][j] for r in records if j < len(r["effective_rank"])])
                 for j in range(count)]
        rows.append([f"{name} ({len(records)} runs)", *(f"{rank:.2f}" for rank in ranks)])
    return markdown_table(["setting", *(f"learner {j}" for j in range(count))], rows)


def cost_lines(records) -> list:
    """Training seconds per learner (the runs that trained it) and scoring seconds per 1,000 test images."""
    trained = [seconds for record in records for seconds in record["train_s"].values()]
    timed = [record["timing"] for record in records if record.get("timing")]
    lines = []
    if trained:
        lines.append(f"- Training: {np.mean(trained):.0f} s per learner on average ({len(trained)} learners, "
                     f"{min(trained):.0f}-{max(trained):.0f} s, the sum of its epochs in metrics.jsonl), so K learners "
                     "cost K times that: the k-th learner adds the same again.")
    if timed:
        per = [1000 * t["score_s"] / t["images"] for t in timed]
        learners = max(int(k) for record in records for k in record["curve"])
        lines.append(f"- Scoring: {np.mean(per):.1f} s per 1,000 test images with all {learners} learners "
                     f"({min(per):.1f}-{max(per):.1f}; {len(timed)} runs; one forward and one backward pass per "
                     f"learner, so about {np.mean(per) / learners:.1f} s per learner per 1,000 images).")
    return lines


def study_markdown(records) -> str:
    by_setting = defaultdict(list)
    for record in records:
        by_setting[setting(record)].append(record)
    recommended = by_setting.get("recommended", [])
    units = sorted({(r["run"]["dataset"].replace("_local", ""), r["run"]["seed"]) for r in recommended})
    lines = ["# The ensemble-size study: what the k-th learner buys", "",
             f"{len(records)} runs archived ({', '.join(f'{len(v)} {k}' for k, v in sorted(by_setting.items()))}); "
             f"{len(units)} units (training set, seed) in the recommended setting. Made by "
             f"studies/ensemble_size/analysis.py from the records alone; each k minus k = {BASE}, the first k "
             "learners of the same run, paired on training set and seed, mean over units with its 95% t interval.",
             ""]
    for letter, (kind, metric, title) in zip("abc", KINDS):
        lines += [f"## {letter}. {title}: the first k learners minus the first {BASE} (recommended setting)", "",
                  *gain_table(recommended, kind, metric), "", f"Mean {title} per k:", "",
                  *level_table(recommended, kind, metric), ""]
    published = by_setting.get("published", [])
    if published:
        lines += ["## d. The published setting (RAR, Lambda 1) at K = 8, seed 1, as a direction", "",
                  *gain_table(published, "semantic", "auc"), "", "Its pixel AUROC on the local sets:", "",
                  *gain_table(published, "local", "pixel_auroc"), ""]
    lines += ["## e. Each learner's effective rank on the test images", "", *rank_table(by_setting), "",
              "## f. Cost", "", *cost_lines(records), ""]
    return "\n".join(lines)


@cli
def main(argv=None):
    parser = ArgumentParser(prog="python -m studies.ensemble_size.analysis", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=[], help="grid folders whose evaluated runs are archived first")
    parser.add_argument("--study", default="studies/ensemble_size", help="the study's folder (records/, study.md)")
    args = parser.parse_args(argv)
    records_dir = Path(args.study) / "records"
    if args.runs:
        print(f"archived {archive(args.runs, records_dir)} runs into {records_dir}")
    records = load_records(records_dir)
    if not records:
        raise UserError(f"{records_dir} holds no records; run ./studies/ensemble_size/run.sh first")
    write_text(Path(args.study) / "study.md", study_markdown(records))
    print(f"wrote {Path(args.study) / 'study.md'} from {len(records)} records")


if __name__ == "__main__":
    main()
