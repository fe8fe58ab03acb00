"""The latent-size study's analysis (README.md beside this file): what Model.ls does to each score, and whether a
quantity of normal images alone picks the latent size the test labels would.

    python -m studies.latent_size.analysis [--runs runs/latent_size] [--study studies/latent_size]

With --runs, each evaluated run is archived first as records/<run>.json: its metrics (results.json), and what its
normal reference (reference.pt, held-out normal training images) says without a label: the mean, spread and
coefficient of variation of rec over the calibration half, and the learners' mean disagreement there (unc, dsu).
The report (study.md) is made from the records alone: each latent size minus 16, paired on training set and seed,
with 95% t intervals; then, per label-free quantity, the rank correlation with the test AUC over the four latent
sizes of a unit and what choosing by it loses against the best latent size in hindsight.
"""
import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from studies.common import (anomaly_kind, confirming_runs, markdown_table, mean_interval, number, paired_over_units,
                            read_record, shown, training_set, write_text)
from utils.errors import ArgumentParser, UserError, cli

BASE = 16  # the published latent size
SCORES = ("rec", "unc", "dsu", "rec_z_top1", "dsu_z_top1")
KINDS = (("semantic", "auc", "image AUC, semantic sets"), ("local", "auc", "image AUC, local sets"),
         ("local", "pixel_auroc", "pixel AUROC, local sets"))
QUANTITIES = {"rec_mean": "mean rec of the held-out normal images",
              "rec_std": "standard deviation of their rec",
              "rec_cv": "their rec's coefficient of variation (std / mean)",
              "unc_mean": "the learners' mean output disagreement (unc) on them",
              "dsu_mean": "the learners' mean input-gradient disagreement (dsu) on them"}
CHOOSING_SEEDS, CONFIRMING_SEEDS = (1,), (2, 3)


def label_free(calibration: dict) -> dict:
    """The label-free quantities of a run from its reference's calibration scores ({score: values})."""
    rec = np.asarray(calibration["rec"], dtype=np.float64)
    return {"rec_mean": float(rec.mean()), "rec_std": float(rec.std(ddof=1)),
            "rec_cv": float(rec.std(ddof=1) / rec.mean()),
            "unc_mean": float(np.mean(calibration["unc"])), "dsu_mean": float(np.mean(calibration["dsu"])),
            "images": int(rec.size)}


def record_of(run_dir) -> dict:
    import torch  # only the archive reads reference.pt
    results = json.loads((Path(run_dir) / "results.json").read_text())
    reference = torch.load(Path(run_dir) / "reference.pt", map_location="cpu", weights_only=True)
    calibration = {name: reference["calibration"][name].numpy() for name in ("rec", "unc", "dsu")}
    return {"run": results["run"], "results": {name: results[name] for name in SCORES},
            "label_free": label_free(calibration), "effective_rank": results["diagnostics"]["effective_rank"],
            "reference": results["reference"], "timing": results.get("timing")}


def archive(folders, records) -> int:
    count = 0
    for folder in folders:
        for results in sorted(Path(folder).glob("*/results.json")):
            write_text(Path(records) / f"{results.parent.name}.json", json.dumps(record_of(results.parent), indent=1))
            count += 1
    return count


def load_records(records) -> list:
    return [read_record(path) for path in sorted(Path(records).glob("*.json"))]


def values(records, ls, score, metric, kind, seeds=None) -> dict:
    """{(data set, seed): metric} of the runs at latent size ls of that anomaly kind which have it."""
    return {(r["run"]["dataset"], r["run"]["seed"]): r["results"][score][metric] for r in records
            if r["run"]["ls"] == ls and anomaly_kind(r["run"]["dataset"]) == kind
            and metric in r["results"][score] and (seeds is None or r["run"]["seed"] in seeds)}


def sizes(records) -> list:
    return sorted({r["run"]["ls"] for r in records})


def effect_table(records, kind, metric) -> list:
    scores = [s for s in SCORES if any(metric in r["results"][s] for r in records)]
    rows = [[f"ls {ls}", *(shown(paired_over_units(values(records, ls, s, metric, kind),
                                                   values(records, BASE, s, metric, kind))) for s in scores)]
            for ls in sizes(records) if ls != BASE]
    levels = [[f"ls {ls} (mean)", *(number(np.mean(list(found.values()))) if (found := values(
        records, ls, s, metric, kind)) else "-" for s in scores)] for ls in sizes(records)]
    return markdown_table(["", *(f"{s} (ls - {BASE})" for s in scores)], rows + levels)


def units(records, kind, metric, seeds, score="rec") -> dict:
    """{(training set, seed): {ls: (label-free quantities, the test metric)}} with every latent size present."""
    found = defaultdict(dict)
    for r in records:
        run = r["run"]
        if anomaly_kind(run["dataset"]) == kind and run["seed"] in seeds and metric in r["results"][score]:
            found[training_set(run["dataset"]), run["seed"]][run["ls"]] = (r["label_free"],
                                                                           r["results"][score][metric])
    every = set(sizes(records))
    return {key: by_ls for key, by_ls in found.items() if set(by_ls) == every}


def correlation(by_unit, quantity) -> dict | None:
    """Spearman's rho between the quantity and the test metric over a unit's latent sizes, mean over units."""
    pairs = [([q[quantity] for q, _ in by_ls.values()], [m for _, m in by_ls.values()]) for by_ls in by_unit.values()]
    rhos = [stats.spearmanr(q, m).statistic for q, m in pairs if np.ptp(q) > 0 and np.ptp(m) > 0]  # else undefined
    if not rhos:
        return None
    mean, low, high = mean_interval(rhos)
    if low is not None:  # a mean of correlations lies in [-1, 1], and so does the interval that may hold it
        low, high = max(low, -1.0), min(high, 1.0)
    return {"mean": mean, "low": low, "high": high, "n": len(rhos)}


def regret(by_unit, choose) -> dict | None:
    """What choosing a latent size by `choose(by_ls) -> ls` loses against the best in hindsight, over units."""
    losses = [max(m for _, m in by_ls.values()) - by_ls[choose(by_ls)][1] for by_ls in by_unit.values()]
    if not losses:
        return None
    mean, low, high = mean_interval(losses)
    return {"mean": mean, "low": low, "high": high, "n": len(losses)}


def by_quantity(quantity, sign):
    """A rule picking the latent size whose quantity is lowest (sign +1) or highest (sign -1)."""
    return lambda by_ls: min(by_ls, key=lambda ls: sign * by_ls[ls][0][quantity])


def direction(records, quantity, kind, metric) -> int:
    """+1 when, on the choosing seeds, a lower quantity went with a higher test metric (rho < 0), else -1."""
    rho = correlation(units(records, kind, metric, CHOOSING_SEEDS), quantity)
    return 1 if rho is None or rho["mean"] < 0 else -1


def works(rho, sign, loss, fixed) -> bool:
    """On the confirming seeds: rank correlation of the sign chosen on seed 1 with its interval away from 0, and a
    smaller loss than always taking ls 16."""
    if rho is None or rho["low"] is None or loss is None or fixed is None:
        return False
    agrees = rho["high"] < 0 if sign > 0 else rho["low"] > 0
    return agrees and loss["mean"] < fixed["mean"]


def criterion_table(records, kind, metric, judged=True) -> tuple[list, list]:
    """The criterion's rows for rec's `metric` on `kind` sets, and the quantities that work; judged=False (seeds 2-3
    not all archived) leaves the verdict column empty."""
    confirming = units(records, kind, metric, CONFIRMING_SEEDS)
    fixed = regret(confirming, lambda by_ls: BASE)
    rows, passing = [], []
    for quantity in QUANTITIES:
        sign = direction(records, quantity, kind, metric)
        rho = correlation(confirming, quantity)
        loss = regret(confirming, by_quantity(quantity, sign))
        ok = works(rho, sign, loss, fixed)
        passing += [quantity] if ok else []
        rows.append([quantity, "lowest" if sign > 0 else "highest",
                     shown(correlation(units(records, kind, metric, CHOOSING_SEEDS), quantity)), shown(rho),
                     shown(loss), ("yes" if ok else "no") if judged else "-"])
    rows.append([f"always ls {BASE}", "-", "-", "-", shown(fixed), "-"])
    header = ["quantity", "picks", "rho, seed 1", "rho, seeds 2-3", "loss, seeds 2-3", "works"]
    return markdown_table(header, rows), passing


def study_markdown(records) -> str:
    seeds = sorted({r["run"]["seed"] for r in records})
    lines = ["# The latent-size study: Model.ls at K = 3", "",
             f"{len(records)} runs archived (latent sizes {', '.join(map(str, sizes(records)))}; seeds "
             f"{', '.join(map(str, seeds))}). Made by studies/latent_size/analysis.py from the records alone; each "
             f"latent size minus {BASE}, paired on training set and seed, mean over units with its 95% t interval.",
             ""]
    for letter, (kind, metric, title) in zip("abc", KINDS):
        lines += [f"## {letter}. {title}: each latent size minus {BASE}", "", *effect_table(records, kind, metric), ""]
    lines += ["## d. Can normal images alone pick the latent size?", "",
              "Each quantity is computed on the run's held-out normal images (the reference's calibration half), "
              "no label used: " + "; ".join(f"`{q}`, {text}" for q, text in QUANTITIES.items()) + ". Per unit "
              "(training set, seed), rho is Spearman's rank correlation between the quantity and rec's test metric "
              "over the latent sizes; the rule picks the latent size where the quantity is lowest or highest, the "
              "direction taken from seed 1; its loss is the best latent size's metric in hindsight minus the picked "
              "one's. A quantity works when, on seeds 2-3, rho keeps seed 1's sign with its interval away from 0 "
              f"and its loss is below always taking ls {BASE}'s.", ""]
    verdicts, (archived, expected) = [], confirming_runs(records, CHOOSING_SEEDS, CONFIRMING_SEEDS)
    for kind, metric, title in KINDS:
        table, passing = criterion_table(records, kind, metric, judged=archived == expected)
        lines += [f"### rec, {title}", "", *table, ""]
        verdicts.append(f"{title}: {', '.join(passing) if passing else 'none'}")
    if archived < expected:
        lines += [f"Seeds 2-3 hold {archived} of their {expected} runs: the columns of seeds 2-3 are the runs so far, "
                  "and no quantity is judged until they are all archived.", ""]
    else:
        lines += ["Quantities that work: " + "; ".join(verdicts) + ".", ""]
    return "\n".join(lines)


@cli
def main(argv=None) -> None:
    parser = ArgumentParser(prog="python -m studies.latent_size.analysis", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=[], help="grid folders whose evaluated runs are archived first")
    parser.add_argument("--study", default=str(Path(__file__).parent), help="the study folder (records/, study.md)")
    args = parser.parse_args(argv)
    records = Path(args.study) / "records"
    if args.runs:
        print(f"archived {archive(args.runs, records)} runs into {records}")
    found = load_records(records)
    if not found:
        raise UserError(f"{records} holds no record; archive runs with --runs first")
    write_text(Path(args.study) / "study.md", study_markdown(found))
    print(f"wrote {Path(args.study) / 'study.md'} from {len(found)} records")


if __name__ == "__main__":
    main()
