"""The RAR study's analysis: which way of training the juniors (a "candidate") to recommend, from its records.

    python -m studies.rar.analysis [--runs runs/rar_screen runs/rar_confirm] [--study studies/rar]
                                   [--figure images/rar_rank.png]

The grids (rar_screen.yaml, rar_confirm.yaml) name options that have left the core since commit 81a2410; they were
run, and are rerun, at that commit (README.md). Run folders are not in git; the records are. First, every evaluated
run under the --runs grid folders (those that exist) is archived as <study>/records/<grid folder>/<run folder>.json:
{"results": its results.json, "rank_curves": {"learnerK": effective rank per epoch}, "train_seconds": {"learnerK":
sum of its epochs' epoch_s}, "score_spread": {score: {"normal_sd", "shift"}}}, the middle two from its metrics.jsonl,
the last from its scores.csv. A file is rewritten only when the run's results.json differs from the archived one (or,
to add it, the archived one has no score_spread and the run folder has a scores.csv), so a restored run (no
metrics.jsonl) keeps its archived curves.
Then the tables (<study>/study.md, also printed) and the figure are computed from the records alone:
  a. per candidate, pooled over data sets and seeds: image AUC of rec, unc, dsu; pixel AUROC on the sets with masks;
     the juniors' effective rank and linear CKA with their seniors (test set), and the juniors' training seconds;
  b. per candidate against each reference (published, Lambda 0, Lambda 0 + precise BN): runs matched on (data set,
     seed), their differences averaged within a unit (a training set and seed: the semantic and local set of a
     class train on the same images, so they share their learners), then the mean over units with its 95% t
     interval over units; image AUC on all sets, pixel AUROC where masks exist, and image AUC by kind of anomaly
     (semantic sets, local-defect sets: one set per unit);
  c. image AUC per data set (mean over seeds), so that class difficulty does not hide in the pooled numbers;
  d. the decision: recommended only if the dsu image-AUC difference (b: all sets) has its interval over units
     above 0 against all three references and the rec image-AUC difference against the published setting has
     mean >= 0;
  e. the screen's ranking, fixed before the screen ended: candidates (not the four baselines) ordered by their
     worst mean dsu image-AUC difference against the three references; the first two go to the confirmation grid
     with more seeds, and the third as well if its worst difference is above 0;
  f. the candidates table e chose, against the references on the confirmation's seeds alone (not the screen's, on
     which they were chosen), with the decision's conditions on those runs;
  g. per candidate, how each score spreads over the normal test images (sd of log score) and how far the abnormal
     ones lie above them (shift of its mean), from the runs' scores.csv.
The figure draws the juniors' effective rank over the epochs (probe of training images), one line per candidate.
"""
import argparse
import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from studies.common import (KINDS, SCORES, anomaly_kind, interval_text, markdown_table, number,  # noqa: E402
                            paired_over_units, read_record, write_text)
from utils.errors import ArgumentParser, UserError, cli  # noqa: E402

PRECISE_BN = " + precise BN"
PUBLISHED, PLAIN = "published (linear_cka, Lambda 1)", "Lambda 0 (plain ensemble)"
BASELINES = (PUBLISHED, PUBLISHED + PRECISE_BN, PLAIN, PLAIN + PRECISE_BN)  # shown first, in this order
REFERENCES = (PUBLISHED, PLAIN, PLAIN + PRECISE_BN)  # what each candidate is compared with, run by run
METRICS = {"auc": "image AUC", "pixel_auroc": "pixel AUROC"}
SCREEN_SEED = 1  # the seed of rar_screen.yaml; the confirmation's seeds are others


# ---------------------------------------------------------------- candidates

def label(run) -> str:
    """The candidate a run's settings ("run" of results.json) describe; Lambda 0 repels nothing, whatever the kind."""
    suffix = PRECISE_BN if run.get("precise_bn", False) else ""
    if run["Lambda"] == 0:
        return PLAIN + suffix
    repulsion, spread = run.get("repulsion", "linear_cka"), run.get("spread", 0.0)
    repel_on = run.get("repel_on", "training")
    if (repulsion, run["Lambda"], spread, repel_on) == ("linear_cka", 1, 0, "training"):
        return PUBLISHED + suffix
    return (f"{repulsion}, Lambda {run['Lambda']:g}" + (f", spread {spread:g}" if spread else "")
            + (f", on {repel_on} images" if repel_on != "training" else "") + suffix)


def display_order(name: str) -> tuple:
    return (BASELINES.index(name), "") if name in BASELINES else (len(BASELINES), name)


# ---------------------------------------------------------------- the archive

def read_metrics(path) -> list:
    """metrics.jsonl's records; none when the file is missing (a restored run), a cut last line skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return [record for record in records if isinstance(record, dict)]


def per_epoch(records, key) -> dict:
    """{"learnerK": {epoch: value}}; an epoch logged twice (trained again after a resume) keeps its last record."""
    learners = defaultdict(dict)
    for record in records:
        if re.fullmatch(r"learner\d+", str(record.get("tag"))) and key in record:
            learners[record["tag"]][record["step"]] = record[key]
    return {tag: learners[tag] for tag in sorted(learners, key=lambda tag: int(tag.removeprefix("learner")))}


def score_spread(path) -> dict:
    """From a run's scores.csv: per score, the standard deviation of log(score) over the normal test images
    ("normal_sd") and the mean of log(score) over the abnormal ones minus that over the normal ones ("shift"); {}
    when the file is missing (a restored run) or holds not both kinds of image."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        labels = np.array([int(row["label"]) for row in rows])
        spread = {}
        for score in SCORES:
            logs = np.log(np.maximum([float(row[score]) for row in rows], np.finfo(np.float64).tiny))
            normal, abnormal = logs[labels == 0], logs[labels == 1]
            if len(normal) < 2 or not len(abnormal):
                return {}
            spread[score] = {"normal_sd": float(normal.std(ddof=1)), "shift": float(abnormal.mean() - normal.mean())}
        return spread
    except (OSError, KeyError, ValueError):
        return {}


def archive_entry(results, records, spread) -> dict:
    return {"results": results,
            "rank_curves": {tag: [epochs[e] for e in sorted(epochs)]
                            for tag, epochs in per_epoch(records, "effective_rank").items()},
            "train_seconds": {tag: sum(epochs.values()) for tag, epochs in per_epoch(records, "epoch_s").items()},
            "score_spread": spread}


def evaluated_runs(folder) -> list:
    """(run folder, its results.json) of every run under a grid folder with a readable results.json; others are
    skipped with a warning."""
    runs = []
    for path in sorted(Path(folder).glob("*/results.json")):
        try:
            results = json.loads(path.read_text())
            if not isinstance(results.get("run"), dict) or not all(score in results for score in SCORES):
                raise ValueError(f'no "run" section or not every score of {SCORES}')
        except (OSError, ValueError, AttributeError) as err:
            print(f"warning: skipping {path}: {err}", file=sys.stderr)
            continue
        runs.append((path.parent, results))
    return runs


def archive_runs(folders, records) -> list:
    """Archive every evaluated run under the grid folders that exist; returns the files written."""
    written = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for run_dir, results in evaluated_runs(folder):
            path = Path(records) / folder.name / f"{run_dir.name}.json"
            try:
                entry = json.loads(path.read_text())
                archived = json.dumps(entry["results"]) == json.dumps(results)
            except (OSError, ValueError, KeyError, TypeError):
                archived = False  # not archived yet, or unreadable: write it
            if archived:
                # a restored run lands here (its metrics.jsonl and scores.csv are gone); an entry archived before
                # score_spread existed gets it, and keeps its curves
                if entry.get("score_spread"):
                    continue
                entry["score_spread"] = score_spread(run_dir / "scores.csv")
                if not entry["score_spread"]:
                    continue
            else:
                entry = archive_entry(results, read_metrics(run_dir / "metrics.jsonl"),
                                      score_spread(run_dir / "scores.csv"))
            write_text(path, json.dumps(entry, indent=2) + "\n")
            written.append(path)
    return written


def read_archive_file(path) -> dict:
    entry = read_record(path)
    if not isinstance(entry.get("results"), dict) or not isinstance(entry["results"].get("run"), dict):
        raise UserError(f'archive file {path} is unreadable (no "results" with a "run" section); take it back from '
                        "git (git checkout -- PATH) or delete it and archive its run again")
    return entry


def load_archive(records) -> list:
    """The archived runs, one per (candidate, data set, seed): a run of the same three in a second grid folder is
    left out with a warning (the first by path stays), so that pairs are unambiguous."""
    entries, seen = [], {}
    for path in sorted(Path(records).glob("*/*.json")):
        entry = read_archive_file(path)
        run = entry["results"]["run"]
        key = (label(run), run["dataset"], run["seed"])
        if key in seen:
            print(f"warning: {path} repeats {seen[key]} ({key[0]}, {key[1]}, seed {key[2]}); left out",
                  file=sys.stderr)
            continue
        seen[key] = path
        entries.append(entry)
    return entries


# ---------------------------------------------------------------- the tables

def by_candidate(entries) -> dict:
    groups = defaultdict(list)
    for entry in entries:
        groups[label(entry["results"]["run"])].append(entry)
    return {name: groups[name] for name in sorted(groups, key=display_order)}


def mean_or_none(values):
    return float(np.mean(values)) if len(values) else None


def juniors_shape(diagnostics) -> tuple:
    """Mean effective rank of learners 1.., and mean linear CKA of each junior with each of its seniors."""
    cka = np.asarray(diagnostics["linear_cka"])
    pairs = [cka[junior, senior] for junior in range(1, len(cka)) for senior in range(junior)]
    return float(np.mean(diagnostics["effective_rank"][1:])), float(np.mean(pairs))


def taken_tags(entry) -> set:
    """Tags ("learnerK") of the run's learners taken from the shared folder: trained by another run, so their
    curves and seconds belong to that run, and any this run logged under the tag are of an attempt the copy
    replaced (a run stopped part-way through a learner that a twin then finished)."""
    reports = entry["results"].get("diagnostics", {}).get("learners", [])
    return {f"learner{index}" for index, report in enumerate(reports) if (report or {}).get("shared_from")}


def juniors_trained_here(entry) -> bool:
    """Whether the run trained its juniors itself, so that their seconds are its own."""
    juniors = {tag for tag in entry.get("train_seconds", {}) if tag != "learner0"}
    return bool(juniors) and not juniors & taken_tags(entry)


def pooled(entries) -> dict:
    """Table a's row of one candidate: means over its runs (pixel AUROC over those with masks)."""
    results = [entry["results"] for entry in entries]
    row = {"runs": len(results), "datasets": sorted({result["run"]["dataset"] for result in results}),
           "seeds": sorted({result["run"]["seed"] for result in results})}
    for score in SCORES:
        for metric in METRICS:
            row[score, metric] = mean_or_none([result[score][metric] for result in results if metric in result[score]])
    shapes = [juniors_shape(result["diagnostics"]) for result in results if "diagnostics" in result]
    row["junior_rank"] = mean_or_none([rank for rank, _ in shapes])
    row["junior_cka"] = mean_or_none([cka for _, cka in shapes])
    row["junior_seconds"] = mean_or_none([sum(seconds for tag, seconds in entry["train_seconds"].items()
                                              if tag != "learner0")
                                          for entry in entries if juniors_trained_here(entry)])
    return row


def paired_difference(groups, candidate, reference, score, metric, kind=None):
    """(candidate - reference) of runs on the same (data set, seed) that both have the metric (on the sets of one
    kind of anomaly if `kind` is "semantic" or "local"), averaged within each unit (training set, seed), then the
    mean over units with its 95% t interval (None with one unit): the pairs of one unit share their learners, so
    they are not independent. "n" counts units, "pairs" the matched runs; None without pairs."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is none of {KINDS}")

    def values(name):
        return {(e["results"]["run"]["dataset"], e["results"]["run"]["seed"]): e["results"][score][metric]
                for e in groups.get(name, [])
                if metric in e["results"][score] and kind in (None, anomaly_kind(e["results"]["run"]["dataset"]))}
    return paired_over_units(values(candidate), values(reference))


def format_difference(difference) -> str:
    if difference is None:
        return "-"
    n, pairs = difference["n"], difference["pairs"]
    count = f"(n={n} unit" + ("" if n == 1 else "s") + ("" if pairs == n else f", {pairs} runs") + ")"
    return f"{interval_text(difference)} {count}"


def failed_conditions(groups, candidate) -> list:
    """Why the candidate is not recommended; empty when it is. A reference is not a candidate."""
    if candidate in REFERENCES:
        return ["a reference"]
    failures = []
    for reference in REFERENCES:
        dsu = paired_difference(groups, candidate, reference, "dsu", "auc")
        if dsu is None or dsu["low"] is None:
            failures.append(f"dsu vs {reference}: fewer than 2 units")
        elif dsu["low"] <= 0:
            failures.append(f"dsu vs {reference}: interval reaches {dsu['low']:+.3f}")
    rec = paired_difference(groups, candidate, PUBLISHED, "rec", "auc")
    if rec is None:
        failures.append(f"rec vs {PUBLISHED}: no pair")
    elif rec["mean"] < 0:
        failures.append(f"rec vs {PUBLISHED}: falls by {-rec['mean']:.3f}")
    return failures


def of_seeds(groups, keep) -> dict:
    """The groups with only the runs whose seed `keep` accepts (the screen's, or the confirmation's)."""
    return {name: [entry for entry in entries if keep(entry["results"]["run"]["seed"])]
            for name, entries in groups.items()}


def screen_ranking(groups) -> list:
    """Table e: [(candidate, its worst mean dsu difference against the references, its mean rec difference against
    the published setting)], best first, from the screen's runs (seed SCREEN_SEED) alone, so that the confirmation's
    runs never change which candidates it chose; candidates without a pair with every reference are left out."""
    groups = of_seeds(groups, lambda seed: seed == SCREEN_SEED)
    ranking = []
    for name in groups:
        if name in BASELINES:
            continue
        dsu = [paired_difference(groups, name, reference, "dsu", "auc") for reference in REFERENCES]
        if any(difference is None for difference in dsu):
            continue
        rec = paired_difference(groups, name, PUBLISHED, "rec", "auc")
        ranking.append((name, min(difference["mean"] for difference in dsu), rec["mean"]))
    return sorted(ranking, key=lambda row: -row[1])


def confirmed(ranking) -> list:
    """The candidates that go to the confirmation: the first two, and the third if its worst difference is > 0."""
    return [name for place, (name, worst, _) in enumerate(ranking) if place < 2 or (place == 2 and worst > 0)]


def confirmation_section(groups, chosen) -> list:
    """Table f: the chosen candidates against the references on the runs of other seeds than the screen's."""
    fresh = of_seeds(groups, lambda seed: seed != SCREEN_SEED)
    lines = ["", "## f. The confirmed candidates on the confirmation's seeds alone", "",
             f"The runs of other seeds than the screen's ({SCREEN_SEED}): the screen chose these candidates because "
             "they did well on its seed, so the pooled tables above can favour them; these cannot. dsu and "
             "rec image AUC, candidate - reference, as in b; the decision's conditions (d) on these runs alone.", ""]
    return lines + markdown_table(
        ["candidate", *(f"dsu vs {reference}" for reference in REFERENCES), f"rec vs {PUBLISHED}", "decision (d)"],
        [[name, *(format_difference(paired_difference(fresh, name, reference, "dsu", "auc"))
                  for reference in REFERENCES),
          format_difference(paired_difference(fresh, name, PUBLISHED, "rec", "auc")),
          "; ".join(failed_conditions(fresh, name)) or "passes"] for name in chosen])


def separation(spread) -> float | None:
    """d' of one score of one run: the shift of log(score) over the normal images' sd; None if that sd is 0."""
    return spread["shift"] / spread["normal_sd"] if spread["normal_sd"] > 0 else None


def spread_section(groups) -> list:
    """Table g: per candidate, the mean over its runs with a score_spread of sd, shift and d' of log(score)."""
    lines = ["", "## g. How each score spreads over the normal test images", "",
             "From each run's scores.csv, on log(score): sd = its standard deviation over the normal test images, "
             "shift = its mean over the abnormal ones minus that over the normal ones, d' = shift / sd (a run's "
             "own, then the mean over runs). A repulsion can move the abnormal images' scores further up (shift) "
             "and still separate them less, when it spreads the normal images' scores more (sd).", ""]
    columns = [("dsu", "normal_sd"), ("dsu", "shift"), ("dsu", None), ("unc", "normal_sd"), ("unc", "shift"),
               ("unc", None), ("rec", None)]
    rows = []
    for name, members in groups.items():
        spreads = [entry["score_spread"] for entry in members if entry.get("score_spread")]
        if not spreads:
            continue
        cells = []
        for score, part in columns:
            values = [separation(spread[score]) if part is None else spread[score][part] for spread in spreads]
            cells.append(number(mean_or_none([value for value in values if value is not None]), 2))
        rows.append([name, str(len(spreads)), *cells])
    header = ["candidate", "runs", "dsu sd", "dsu shift", "dsu d'", "unc sd", "unc shift", "unc d'", "rec d'"]
    return lines + markdown_table(header, rows)


def study_markdown(entries) -> str:
    groups = by_candidate(entries)
    lines = [f"# The RAR study: {len(entries)} archived runs", "",
             "## a. Per candidate, pooled over data sets and seeds", "",
             "Pixel AUROC: mean over the runs on data sets with masks. Juniors: learners 1.., on the test set "
             "(CKA with each of their seniors); training seconds summed over the juniors.", ""]
    header = ["candidate", "runs", *(f"{score} {METRICS[metric]}" for metric in METRICS for score in SCORES),
              "juniors' eff. rank", "juniors' CKA w/ seniors", "juniors' training s"]
    rows = []
    for name, members in groups.items():
        row = pooled(members)
        seeds = ("seed " if len(row["seeds"]) == 1 else "seeds ") + ", ".join(map(str, row["seeds"]))
        rows.append([name, f"{row['runs']} ({len(row['datasets'])} sets; {seeds})",
                     *(number(row[score, metric]) for metric in METRICS for score in SCORES),
                     number(row["junior_rank"], 2), number(row["junior_cka"]), number(row["junior_seconds"], 0)])
    lines += markdown_table(header, rows)
    for reference in REFERENCES:
        lines += ["", f"## b. Difference from {reference}, runs paired on (data set, seed)", "",
                  "Mean of candidate - reference over units (training set, seed; the semantic and local set of a "
                  "class share their learners), [95% t interval over units], (n units, runs); pixel AUROC on data "
                  "sets with masks.", ""]
        rows = [[name, *(format_difference(paired_difference(groups, name, reference, score, metric))
                         for metric in METRICS for score in SCORES)]
                for name in groups if name != reference]
        lines += markdown_table(["candidate", *(f"{score} {METRICS[metric]}" for metric in METRICS
                                                for score in SCORES)], rows)
        lines += ["", f"Image AUC by kind of anomaly, against {reference}: semantic sets, local-defect sets "
                  "(FMNIST_local_c<class>); one set per unit.", ""]
        rows = [[name, *(format_difference(paired_difference(groups, name, reference, score, "auc", kind))
                         for score in ("dsu", "rec") for kind in ("semantic", "local"))]
                for name in groups if name != reference]
        lines += markdown_table(["candidate", "dsu semantic", "dsu local", "rec semantic", "rec local"], rows)
    datasets = sorted({entry["results"]["run"]["dataset"] for entry in entries})
    for score in SCORES:
        lines += ["", f"## c. {score} image AUC per data set (mean over seeds)", ""]
        rows = [[name, *(number(mean_or_none([e["results"][score]["auc"] for e in members
                                               if e["results"]["run"]["dataset"] == dataset]))
                         for dataset in datasets)] for name, members in groups.items()]
        lines += markdown_table(["candidate", *datasets], rows)
    lines += ["", "## d. Decision", "",
              "Recommended only if dsu image AUC beats all three references (95% interval over units above 0) and "
              f"rec image AUC does not fall against {PUBLISHED} (mean difference >= 0).", ""]
    verdicts = {name: failed_conditions(groups, name) for name in groups}
    passing = [name for name, failures in verdicts.items() if not failures]
    lines.append(f"**Recommended: {'; '.join(passing)}**" if passing else "**No candidate passes.**")
    lines += [""] + [f"- {name}: {'passes' if not failures else '; '.join(failures)}"
                     for name, failures in verdicts.items()]
    ranking = screen_ranking(groups)
    lines += ["", "## e. The screen's ranking", "",
              f"The screen's runs (seed {SCREEN_SEED}) alone: candidates (not the baselines) by their worst mean dsu "
              "image-AUC difference against the three references; the first two go to the confirmation with more "
              "seeds, the third too if its worst difference is above 0.", ""]
    chosen = confirmed(ranking)
    lines += markdown_table(["candidate", "worst mean dsu difference", f"rec vs {PUBLISHED}", "to confirmation"],
                            [[name, f"{worst:+.3f}", f"{rec:+.3f}", "yes" if name in chosen else "no"]
                             for name, worst, rec in ranking])
    lines += confirmation_section(groups, chosen) + spread_section(groups)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the figure

def junior_curves(entries) -> dict:
    """Per candidate: the effective rank per epoch of each junior each run trained itself (learner 0 is no junior;
    taken_tags says why a shared learner is left out)."""
    curves = defaultdict(list)
    for entry in entries:
        taken = taken_tags(entry)
        for tag, curve in entry["rank_curves"].items():
            if tag != "learner0" and tag not in taken and curve:
                curves[label(entry["results"]["run"])].append(curve)
    return dict(curves)


def rank_figure(entries, path) -> None:
    """The juniors' effective rank over the epochs, one line per candidate, mean over runs and juniors; colour = the
    candidate without precise BN, dashed = with it (precise BN acts after each learner's last epoch, so it changes
    a junior's curve only through the seniors it repels from)."""
    curves = junior_curves(entries)
    if not curves:
        raise UserError("no per-epoch effective rank in the archive; were its runs trained by this version?")
    options = sorted({name.removesuffix(PRECISE_BN) for name in curves}, key=display_order)
    colours = {option: f"C{index % 10}" for index, option in enumerate(options)}
    fig, ax = plt.subplots(figsize=(7.2, 4.2), layout="constrained")
    try:
        for name in sorted(curves, key=display_order):
            length = min(len(curve) for curve in curves[name])
            mean = np.mean([curve[:length] for curve in curves[name]], axis=0)
            ax.plot(np.arange(1, length + 1), mean, label=f"{name} ({len(curves[name])} juniors)",
                    color=colours[name.removesuffix(PRECISE_BN)],
                    linestyle="--" if name.endswith(PRECISE_BN) else "-")
        ax.set(xlabel="epoch", ylabel="effective rank of the latent z",
               title="juniors' effective rank on training images (eval mode)")
        ax.legend(fontsize="x-small")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


@cli
def main(argv=None):
    parser = ArgumentParser(prog="python -m studies.rar.analysis", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["runs/rar_screen", "runs/rar_confirm"],
                        help="grid folders whose runs are archived (missing ones are skipped)")
    parser.add_argument("--study", default="studies/rar", help="the study's folder: records/ and study.md")
    parser.add_argument("--figure", default="images/rar_rank.png", help="the effective-rank figure (PNG)")
    args = parser.parse_args(argv)
    records, report = Path(args.study) / "records", Path(args.study) / "study.md"
    written = archive_runs(args.runs, records)
    entries = load_archive(records)
    if not entries:
        raise UserError(f"no archived runs in {records}; run the study's grids first (studies/rar/README.md)")
    table = study_markdown(entries)
    write_text(report, table)
    rank_figure(entries, args.figure)
    print(table, end="")
    print(f"archived {len(written)} new or changed runs; {len(entries)} runs in {records}; "
          f"wrote {report} and {args.figure}")


if __name__ == "__main__":
    main()
