"""The RAR study's table and figure, from the runs of a grid folder (by default runs/rar_study):

    python scripts/rar_study.py [--runs runs/rar_study] [--figure images/rar_rank.png]

One row per repulsion setting (the option, or none for Solver.Lambda=0) and precise-BatchNorm setting: how many
runs it pools (data sets x seeds), image AUC and AP of rec, unc and dsu as mean ± std over those runs, the
juniors' effective rank of their tapped features on the test set, and the juniors' linear CKA with their seniors
on the test set (both from results.json's diagnostics). Then dsu and unc AUC per data set, so that class
difficulty does not hide in the pooled std. Writes <runs>/study.md and prints it; the figure shows each
setting's juniors' effective rank over the epochs (metrics.jsonl, on the probe of training images, mean over runs
and juniors).
"""
import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from utils.errors import UserError, cli  # noqa: E402
from utils.summary import SCORE_ORDER, collect  # noqa: E402

METRICS = ("auc", "ap")


def setting(run) -> tuple:
    """(repulsion, precise BN) of a run's settings; no repulsion when Lambda is 0."""
    repulsion = "none (Lambda 0)" if run["Lambda"] == 0 else run.get("repulsion", "linear_cka")
    return repulsion, bool(run.get("precise_bn", False))


def display_order(repulsion: str) -> tuple:
    """No repulsion first, then the published linear CKA, then the other options by name."""
    return {"none (Lambda 0)": 0, "linear_cka": 1}.get(repulsion, 2), repulsion


def juniors(diagnostics) -> tuple:
    """Mean effective rank of learners 1.., and mean linear CKA of each junior with each of its seniors."""
    cka = np.asarray(diagnostics["linear_cka"])
    pairs = [cka[junior, senior] for junior in range(1, len(cka)) for senior in range(junior)]
    return float(np.mean(diagnostics["effective_rank"][1:])), float(np.mean(pairs))


def study_rows(results) -> list:
    """One row per setting, pooled over data sets and seeds; per data set means of dsu and unc AUC."""
    groups = defaultdict(list)
    for result in results:
        groups[setting(result["run"])].append(result)
    rows = []
    for key, runs in groups.items():
        row = {"repulsion": key[0], "precise_bn": key[1], "runs": len(runs),
               "datasets": sorted({run["run"]["dataset"] for run in runs}),
               "seeds": sorted({run["run"]["seed"] for run in runs})}
        for score in SCORE_ORDER:
            for metric in METRICS:
                values = np.array([run[score][metric] for run in runs])
                row[f"{score}_{metric}"] = (values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0)
        shapes = np.array([juniors(run["diagnostics"]) for run in runs])
        row["junior_rank"], row["junior_cka"] = shapes.mean(axis=0)
        for dataset in row["datasets"]:
            for score in ("unc", "dsu"):
                row[f"{dataset}_{score}"] = np.mean([run[score]["auc"] for run in runs
                                                     if run["run"]["dataset"] == dataset])
        rows.append(row)
    return sorted(rows, key=lambda row: (display_order(row["repulsion"]), row["precise_bn"]))


def markdown(rows) -> str:
    datasets = sorted({dataset for row in rows for dataset in row["datasets"]})
    header = ["repulsion", "precise BN", "runs", *(f"{score} {metric.upper()}" for score in SCORE_ORDER
                                                    for metric in METRICS), "juniors' eff. rank",
              "juniors' CKA w/ seniors"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["repulsion"], "yes" if row["precise_bn"] else "no",
                 f"{row['runs']} ({'/'.join(row['datasets'])}; seeds {', '.join(map(str, row['seeds']))})"]
        for score in SCORE_ORDER:
            for metric in METRICS:
                mean, std = row[f"{score}_{metric}"]
                cells.append(f"{mean:.3f} ± {std:.3f}" if row["runs"] > 1 else f"{mean:.3f}")  # no std of one run
        cells += [f"{row['junior_rank']:.2f}", f"{row['junior_cka']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    per_set = ["", "Image AUC per data set (mean over seeds):", "",
               "| repulsion | precise BN | " + " | ".join(f"{d} unc | {d} dsu" for d in datasets) + " |",
               "|---|---|" + "---|---|" * len(datasets)]
    for row in rows:
        values = [f"{row[f'{d}_{s}']:.3f}" if f"{d}_{s}" in row else "-" for d in datasets for s in ("unc", "dsu")]
        per_set.append(f"| {row['repulsion']} | {'yes' if row['precise_bn'] else 'no'} | " + " | ".join(values) + " |")
    return "\n".join(lines + per_set) + "\n"


def label(key) -> str:
    return key[0] + (" + precise BN" if key[1] else "")


def rank_curves(results) -> dict:
    """Per setting (its label): the juniors' effective rank per epoch, one list per junior and run, from each run's
    metrics.jsonl (on the probe of training images). Precise BN acts only after each learner's last epoch, so its
    curves differ from those of the same option without it only through the seniors the juniors repel from."""
    curves = defaultdict(list)
    for result in results:
        records = [json.loads(line) for line in (Path(result["source"]).parent / "metrics.jsonl").open()]
        for tag in sorted({record["tag"] for record in records if record["tag"].startswith("learner")} - {"learner0"}):
            by_epoch = {record["step"]: record["effective_rank"] for record in records
                        if record["tag"] == tag and "effective_rank" in record}
            if by_epoch:
                curves[label(setting(result["run"]))].append([by_epoch[epoch] for epoch in sorted(by_epoch)])
    return dict(curves)


def rank_figure(results, path) -> None:
    """Juniors' effective rank over the epochs, one line per setting, mean over runs and juniors; colour = the
    repulsion, dashed = with precise BN."""
    curves = rank_curves(results)
    if not curves:
        raise UserError("no per-epoch effective rank in the runs' metrics.jsonl; were they trained by this version?")
    names = sorted({setting(result["run"])[0] for result in results}, key=display_order)
    colours = {name: f"C{index}" for index, name in enumerate(names)}
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    try:
        for name in sorted(curves, key=lambda name: (names.index(name.removesuffix(" + precise BN")), name)):
            length = min(len(curve) for curve in curves[name])
            mean = np.mean([curve[:length] for curve in curves[name]], axis=0)
            ax.plot(np.arange(1, length + 1), mean, label=f"{name} ({len(curves[name])} juniors)",
                    color=colours[name.removesuffix(" + precise BN")],
                    linestyle="--" if name.endswith("precise BN") else "-")
        ax.set(xlabel="epoch", ylabel="effective rank of the latent z",
               title="juniors' effective rank on training images (eval mode)")
        ax.legend(fontsize="small")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/rar_study", help="the study's grid folder")
    parser.add_argument("--figure", help="also draw the effective-rank figure to this PNG")
    args = parser.parse_args(argv)
    results = [result for result in collect(args.runs) if "diagnostics" in result]
    if not results:
        raise UserError(f"no evaluated runs with diagnostics under {args.runs}; run the study's grids first")
    table = markdown(study_rows(results))
    (Path(args.runs) / "study.md").write_text(table)
    print(table, end="")
    if args.figure:
        rank_figure(results, args.figure)
        print(f"wrote {Path(args.runs) / 'study.md'} and {args.figure}")


if __name__ == "__main__":
    main()
