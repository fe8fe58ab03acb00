"""The error-map study's analysis (README.md beside this file): does another per-pixel error than the squared one
localise better without losing the image-level decision?

    python -m studies.error_map.analysis [--runs runs/latent_size] [--study studies/error_map]

With --runs, each evaluated run that records/ lacks is scored with every map (measure.py; it needs the run's
checkpoints and reference.pt) and archived as records/<run>.json. The report (study.md) is made from the records
alone. Each map is compared with l2 (today's rec map) in the same run; the differences are averaged over a unit's
latent sizes (unit: training set and seed), then over units with 95% t intervals.

The rule, fixed before the runs were read: the map is chosen on seed 1 by its pixel AUROC gain over l2 on the local
sets; it passes when, on seeds 2-3, that gain's interval lies above 0 and its image AUC is not lower than l2's on
either kind of set (mean difference at least -0.005 and the interval reaching 0).
"""
import argparse
import json
from collections import defaultdict
from pathlib import Path

from studies.common import (anomaly_kind, confirming_runs, markdown_table, number, over_units, read_record, shown,
                            unit, write_text)
from utils.errors import ArgumentParser, UserError, cli

MAPS = ("l2", "l1", "ssim", "l2_ssim")  # as in maps.py, which this analysis does not import (it reads records)
NEW = MAPS[1:]
CHOOSING_SEEDS, CONFIRMING_SEEDS = (1,), (2, 3)
IMAGE_AUC_MARGIN = 0.005
COLUMNS = (("local", "pixel_auroc", "pixel AUROC, local"), ("local", "auc", "image AUC, local"),
           ("semantic", "auc", "image AUC, semantic"), ("local", "z_top1_auc", "referred top 1% AUC, local"))


def archive(folders, records, device="cpu") -> int:
    """Score and archive every evaluated run under `folders` that `records` lacks; the count archived."""
    from studies.error_map.measure import record_of  # needs torch and the run's files, the report does not
    count = 0
    for folder in folders:
        for results in sorted(Path(folder).glob("*/results.json")):
            target = Path(records) / f"{results.parent.name}.json"
            if target.is_file():
                continue
            write_text(target, json.dumps(record_of(results.parent, device), indent=1))
            count += 1
    return count


def load_records(records) -> list:
    return [read_record(path) for path in sorted(Path(records).glob("*.json"))]


def difference(records, name, metric, kind, seeds, ls=None) -> dict | None:
    """The map's metric minus l2's in the same run, averaged within units, then over units."""
    units = defaultdict(list)
    for record in records:
        run, maps = record["run"], record["maps"]
        if (anomaly_kind(run["dataset"]) != kind or run["seed"] not in seeds or (ls is not None and run["ls"] != ls)
                or metric not in maps[name]):
            continue
        units[unit(run)].append(maps[name][metric] - maps["l2"][metric])
    return over_units(units)


def level(records, name, metric, kind, seeds) -> float | None:
    values = [r["maps"][name][metric] for r in records if anomaly_kind(r["run"]["dataset"]) == kind
              and r["run"]["seed"] in seeds and metric in r["maps"][name]]
    return sum(values) / len(values) if values else None


def passes(gain, image_local, image_semantic) -> bool:
    if gain is None or gain["low"] is None or gain["low"] <= 0:
        return False
    return all(d is not None and d["mean"] >= -IMAGE_AUC_MARGIN and (d["high"] is None or d["high"] >= 0)
               for d in (image_local, image_semantic))


def choose(records) -> str | None:
    """The new map with the largest pixel AUROC gain over l2 on the local sets of the choosing seeds."""
    gains = [(found["mean"], name) for name in NEW
             if (found := difference(records, name, "pixel_auroc", "local", CHOOSING_SEEDS))]
    return max(gains)[1] if gains else None


def comparison_table(records, seeds) -> list:
    rows = [[name, *(shown(difference(records, name, metric, kind, seeds)) for kind, metric, _ in COLUMNS)]
            for name in NEW]
    return markdown_table(["map minus l2", *(title for *_, title in COLUMNS)], rows)


def level_table(records, seeds) -> list:
    rows = [[name, *(number(level(records, name, metric, kind, seeds)) for kind, metric, _ in COLUMNS)]
            for name in MAPS]
    return markdown_table(["map (mean over runs)", *(title for *_, title in COLUMNS)], rows)


def by_latent_size(records) -> list:
    sizes = sorted({record["run"]["ls"] for record in records})
    seeds = tuple(sorted({record["run"]["seed"] for record in records}))
    rows = [[name, *(shown(difference(records, name, "pixel_auroc", "local", seeds, ls)) for ls in sizes)]
            for name in NEW]
    return markdown_table(["pixel AUROC minus l2's, local", *(f"ls {ls}" for ls in sizes)], rows)


def study_markdown(records) -> str:
    seeds = sorted({record["run"]["seed"] for record in records})
    sizes = sorted({record["run"]["ls"] for record in records})
    mismatch = max(abs(r["maps"]["l2"]["auc"] - r["eval_rec_auc"]) for r in records)
    chosen = choose(records)
    lines = ["# The error-map study: which per-pixel error localises best", "",
             f"{len(records)} runs archived (K = 3, the recommended setting, latent sizes {', '.join(map(str, sizes))}; "
             f"seeds {', '.join(map(str, seeds))}). Made by studies/error_map/analysis.py from the records alone; "
             "each map minus l2 (today's rec map) in the same run, averaged over a unit's latent sizes (unit: "
             "training set and seed), then over units with 95% t intervals. The l2 image AUC matches eval.py's rec "
             f"AUC in every run to within {mismatch:.1e}.", "",
             "## a. Chosen on seed 1", "", *comparison_table(records, CHOOSING_SEEDS), "",
             *level_table(records, CHOOSING_SEEDS), "",
             f"Chosen: **{chosen}** (the largest pixel AUROC gain on seed 1)." if chosen else "Nothing to choose yet.",
             ""]
    confirming = [r for r in records if r["run"]["seed"] in CONFIRMING_SEEDS]
    lines += ["## b. The decision, on seeds 2-3", ""]
    archived, expected = confirming_runs(records, CHOOSING_SEEDS, CONFIRMING_SEEDS)
    if chosen and confirming and archived < expected:
        lines += [*comparison_table(records, CONFIRMING_SEEDS), "",
                  f"Seeds 2-3 hold {archived} of their {expected} runs: the differences so far, no decision until "
                  "they are all archived.", ""]
    elif chosen and confirming:
        lines += [*comparison_table(records, CONFIRMING_SEEDS), ""]
        verdict = passes(difference(records, chosen, "pixel_auroc", "local", CONFIRMING_SEEDS),
                         difference(records, chosen, "auc", "local", CONFIRMING_SEEDS),
                         difference(records, chosen, "auc", "semantic", CONFIRMING_SEEDS))
        lines += [f"**{chosen} {'passes' if verdict else 'does not pass'}** the rule: pixel AUROC gain's interval "
                  f"above 0 on seeds 2-3, image AUC not lower on either kind of set (mean at least "
                  f"-{IMAGE_AUC_MARGIN}, interval reaching 0).", ""]
    else:
        lines += ["Seeds 2-3 have not run yet: no decision.", ""]
    lines += ["## c. Pixel AUROC gain by latent size (every seed archived)", "", *by_latent_size(records), ""]
    return "\n".join(lines)


@cli
def main(argv=None) -> None:
    parser = ArgumentParser(prog="python -m studies.error_map.analysis", description=__doc__,
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
