"""The scoring study's analysis (README.md beside this file): its tables from its records alone, for AE
(studies/scores) and for the other backbones (studies/backbones, with --form).

    python -m studies.scores.analysis [--study studies/scores] [--rar-records studies/rar/records] [--form FORM]

Each record (<study>/records/<run>.json) holds what commit 81a2410's scoring made of one evaluated run of the
grid: each image score's AUC and AP, the shares of normal and abnormal test images flagged at p <= 0.05, and on the
local sets each map's pixel AUROC, under every form of FORMS and with two references of the same size (the held-out
normal images, Data.holdout, and as many training images drawn by the run's seed, in-sample). The scoring leaves
with the forms and scores it needed; the records keep what it measured.

Rules fixed before the runs were read:
- the form is chosen on seed 1 alone: the highest mean image AUC over the six referred scores (<s>_z, <s>_z_top1)
  with the held-out reference, over seed 1's runs;
- a new score (with that form and the held-out reference) is recommended when, on seeds 2 and 3, its image AUC
  minus rec's has a 95% interval above zero over the units and a mean of at least zero on the semantic and on the
  local sets; among several, the highest mean. A unit is one training (training set, seed, setting): a class's
  semantic and local set share their learners, so their differences are averaged first.
"""
import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from studies.common import (SCORES, anomaly_kind, markdown_table, over_units, paired_over_units, rar_results,
                            read_record, shown, unit, write_text)
from utils.errors import ArgumentParser, UserError, cli

# the score names and forms of the records (utils/method/scores.py at commit 81a2410)
FORMS = ("linear q0", "linear q0.1", "linear q0.5", "log q0", "log q0.1", "log q0.5")
REFERRED = tuple(f"{name}_z" for name in SCORES)
MAPS = (*SCORES, *REFERRED)  # the maps with a pixel AUROC
IMAGE_SCORES = (*SCORES, *(f"{name}_top1" for name in SCORES), *REFERRED, *(f"{name}_top1" for name in REFERRED),
                "fused")
REFERENCES = ("held_out", "in_sample")
CHOOSING_SEEDS, CONFIRMING_SEEDS = (1,), (2, 3)
NEW = tuple(name for name in IMAGE_SCORES if name not in SCORES)
CHOSEN_ON = [f"{name}_z" for name in SCORES] + [f"{name}_z_top1" for name in SCORES]
SETTINGS = {(1.0, False): "published (Lambda 1)", (0.0, True): "Lambda 0 + precise BN"}
MADE_BY = "scripts/score_study.py"  # what the archived study.md files say made them; they stay byte for byte


# ---------------------------------------------------------------- tables

def load_archive(records) -> list:
    return [read_record(path) for path in sorted(Path(records).glob("*.json"))]


def unit_of(run) -> tuple:
    """(training set, seed, setting): a semantic set and its local twin share their learners."""
    return (*unit(run), setting_of(run))


def setting_of(run) -> str:
    return SETTINGS.get((float(run["Lambda"]), bool(run.get("precise_bn", False))), f"Lambda {run['Lambda']}")


def metric(record, reference, form, score, name="auc"):
    return record["references"][reference]["forms"][form][score].get(name)


def paired(records, value, seeds=None, kind=None):
    """The mean over units of value(record) (None skips a record), with its 95% t interval and the unit count."""
    units = defaultdict(list)
    for record in records:
        run = record["run"]
        if (seeds is None or run["seed"] in seeds) and kind in (None, anomaly_kind(run["dataset"])):
            difference = value(record)
            if difference is not None:
                units[unit_of(run)].append(difference)
    return over_units(units)


def choose_form(records) -> tuple[str, list]:
    """The form of the rule above, and the rows of its table."""
    chosen = [record for record in records if record["run"]["seed"] in CHOOSING_SEEDS]
    rows, best = [], None
    for form in FORMS:
        means = [np.mean([metric(r, "held_out", form, score) for r in chosen]) if chosen else np.nan
                 for score in CHOSEN_ON]
        average = float(np.mean(means))
        rows.append([form, *(f"{m:.3f}" for m in means), f"**{average:.3f}**"])
        if chosen and (best is None or average > best[1]):
            best = (form, average)
    return (best[0] if best else None), rows


def difference_to(records, score, baseline, form, reference="held_out", seeds=None, kind=None, name="auc"):
    def value(record):
        ours, theirs = metric(record, reference, form, score, name), metric(record, reference, form, baseline, name)
        return None if ours is None or theirs is None else ours - theirs
    return paired(records, value, seeds, kind)


def decision(records, form) -> tuple[str | None, list]:
    rows, passing = [], []
    for score in NEW:
        pooled = difference_to(records, score, "rec", form, seeds=CONFIRMING_SEEDS)
        semantic = difference_to(records, score, "rec", form, seeds=CONFIRMING_SEEDS, kind="semantic")
        local = difference_to(records, score, "rec", form, seeds=CONFIRMING_SEEDS, kind="local")
        every = difference_to(records, score, "rec", form)
        passes = bool(pooled and pooled["low"] is not None and pooled["low"] > 0 and semantic and local
                      and semantic["mean"] >= 0 and local["mean"] >= 0)
        if passes:
            passing.append((pooled["mean"], score))
        rows.append([score, shown(pooled), shown(semantic), shown(local), shown(every), "yes" if passes else "no"])
    return (max(passing)[1] if passing else None), rows


def rar_auc(rar_records, run, score) -> float | None:
    """The same run's image AUC without a holdout, from the RAR study's records."""
    results = rar_results(rar_records, run)
    return None if results is None else results[score]["auc"]


def setting_difference(records, form, score, name="auc", kind=None):
    """Lambda 0 + precise BN minus the published setting, paired on (data set, seed), with the semantic and local set
    of one training set and seed averaged first; mean over (training set, seed) with its 95% t interval."""
    published, plain = SETTINGS.values()
    values = {published: {}, plain: {}}
    for record in records:
        run = record["run"]
        value = metric(record, "held_out", form, score, name)
        if kind in (None, anomaly_kind(run["dataset"])) and setting_of(run) in values and value is not None:
            values[setting_of(run)][run["dataset"], run["seed"]] = value
    return paired_over_units(values[plain], values[published])


def settings_sections(records, form, heading) -> list:
    """Tables h and i: the two settings against each other, and what the learners look like under each."""
    published, plain = SETTINGS.values()
    rows = [[name, *(shown(setting_difference(records, form, name, kind=kind)) for kind in (None, "semantic", "local"))]
            for name in IMAGE_SCORES]
    rows += [[f"{name} pixel AUROC", "-", "-", shown(setting_difference(records, form, name, "pixel_auroc", "local"))]
             for name in MAPS]
    lines = [f"{heading} h. {plain} minus {published}: image AUC ({form}, held-out reference), pixel AUROC on the "
             "local sets", "", *markdown_table(["score", "all sets", "semantic", "local"], rows), ""]
    rows = []
    for setting in SETTINGS.values():
        diagnostics = [r["diagnostics"] for r in records if setting_of(r["run"]) == setting and "diagnostics" in r]
        if not diagnostics:
            continue
        ratios = [max(ratio for ratio in d["eval_over_train"] if ratio is not None) for d in diagnostics]
        rows.append([setting, len(diagnostics), f"{np.mean([d['effective_rank'][0] for d in diagnostics]):.2f}",
                     f"{np.mean([np.mean(d['effective_rank'][1:]) for d in diagnostics]):.2f}",
                     f"{np.mean(ratios):.2f} (max {max(ratios):.2f})",
                     sum(len(d["warnings"]) for d in diagnostics)])
    lines += [f"{heading} i. The learners under each setting (test features; precise-BN check on training images)", "",
              *markdown_table(["setting", "runs", "effective rank, learner 0", "effective rank, juniors (mean)",
                               "largest eval/train-mode error ratio of a run (mean)", "warnings"], rows), ""]
    return lines


def study_markdown(records, rar_records=None, form=None) -> str:
    """The tables, one set per backbone; `form` fixes the form instead of choosing it on these records' seed 1."""
    networks = sorted({r["run"]["network"] for r in records})
    seeds = sorted({r["run"]["seed"] for r in records})
    lines = [f"# The scoring study: {', '.join(networks)}", "",
             f"{len(records)} runs archived ({', '.join(networks)}; seeds {', '.join(map(str, seeds))}; "
             f"{len({(r['run']['network'], *unit_of(r['run'])) for r in records})} trainings). Made by "
             f"{MADE_BY} from the archive alone; differences are means over units (training set, seed, setting) "
             "with 95% t intervals.", ""]
    for network in networks:
        ours = [r for r in records if r["run"]["network"] == network]
        if len(networks) > 1:
            lines += [f"## {network}", ""]
        lines += network_sections(ours, rar_records, form, "###" if len(networks) > 1 else "##")
    return "\n".join(lines)


def network_sections(records, rar_records, fixed_form, heading) -> list:
    form, rows = choose_form(records)
    lines = [f"{heading} a. The form, chosen on seed 1 (held-out reference): mean image AUC", "",
             *markdown_table(["form", *CHOSEN_ON, "mean of the six"], rows), "",
             f"Chosen: **{form}**." if form else "No run of seed 1 yet: no form chosen.", ""]
    if fixed_form:
        form = fixed_form
        lines += [f"The tables below use **{form}**, fixed by --form (the AE study's choice).", ""]
    if form is None:
        return lines
    best, rows = decision(records, form)
    lines += [f"{heading} b. The decision: each new score minus rec, image AUC ({form}, held-out reference)", "",
              *markdown_table(["score", "seeds 2-3, all sets", "seeds 2-3, semantic", "seeds 2-3, local",
                               "all seeds, all sets", "passes"], rows), "",
              f"**Recommended: {best}.**" if best else "**No new score passes.**", ""]
    rows = []
    for score, baseline in (("dsu_z", "rec"), ("dsu_z", "dsu"), ("dsu_z_top1", "dsu"), ("dsu", "rec")):
        rows.append([f"{score} - {baseline}", *(shown(difference_to(records, score, baseline, form, kind=kind))
                                               for kind in (None, "semantic", "local"))])
    lines += [f"{heading} c. dsu referred to normal images (all seeds)", "",
              *markdown_table(["difference", "all sets", "semantic", "local"], rows), ""]
    rows = []
    for name in IMAGE_SCORES:
        means = {setting: [metric(r, "held_out", form, name) for r in records if setting_of(r["run"]) == setting]
                 for setting in SETTINGS.values()}
        by_kind = {kind: [metric(r, "held_out", form, name) for r in records
                          if anomaly_kind(r["run"]["dataset"]) == kind] for kind in ("semantic", "local")}
        rows.append([name, *(f"{np.mean(values):.3f}" if values else "-"
                             for values in (*means.values(), *by_kind.values()))])
    lines += [f"{heading} d. Mean image AUC per score ({form}, held-out reference, all seeds)", "",
              *markdown_table(["score", *SETTINGS.values(), "semantic sets", "local sets"], rows), ""]
    rows = []
    for name in ("rec", "dsu", "rec_z", "dsu_z", "rec_z_top1", "dsu_z_top1", "fused"):
        def held_minus_in(record, name=name):
            return metric(record, "held_out", form, name) - metric(record, "in_sample", form, name)
        fpr = {kind: np.mean([metric(r, kind, form, name, "fpr05") for r in records]) for kind in REFERENCES}
        rows.append([name, shown(paired(records, held_minus_in)), f"{fpr['held_out']:.3f}", f"{fpr['in_sample']:.3f}"])
    lines += [f"{heading} e. Held-out against in-sample reference (same learners, same size; {form})", "",
              *markdown_table(["score", "AUC held-out - in-sample",
                               "normal test images flagged at p <= 0.05, held-out", "the same, in-sample"], rows), ""]
    rows = []
    for score in SCORES:
        def holdout_cost(record, score=score):
            without = rar_auc(rar_records, record["run"], score)
            return None if without is None else metric(record, "held_out", form, score) - without
        rows.append([score, *(shown(paired(records, holdout_cost, kind=kind)) for kind in (None, "semantic", "local"))])
    lines += [f"{heading} f. What holding out 10% costs: image AUC with Data.holdout=0.1 minus the RAR study's runs "
              "without", "", *markdown_table(["score", "all sets", "semantic", "local"], rows), ""]
    local = [r for r in records if anomaly_kind(r["run"]["dataset"]) == "local"]
    rows = []
    for form_name in FORMS:
        pixel = [[metric(r, "held_out", form_name, name, "pixel_auroc") for r in local] for name in MAPS]
        rows.append([form_name, *(f"{np.mean(values):.3f}" if local else "-" for values in pixel)])
    lines += [f"{heading} g. Pixel AUROC on the local sets (held-out reference), raw maps and referred ones, per form",
              "", *markdown_table(["form", *MAPS], rows), ""]
    return lines + settings_sections(records, form, heading)


@cli
def main(argv=None):
    parser = ArgumentParser(prog="python -m studies.scores.analysis", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="studies/scores", help="the study's folder: records/ and study.md")
    parser.add_argument("--rar-records", default="studies/rar/records", help="the RAR study's records, for table f")
    parser.add_argument("--form", choices=FORMS, help="use this form instead of choosing one on seed 1")
    args = parser.parse_args(argv)
    records, report = Path(args.study) / "records", Path(args.study) / "study.md"
    archived = load_archive(records)
    if not archived:
        raise UserError(f"no records in {records}; the study's runs are scored at commit 81a2410 (README.md)")
    rar = Path(args.rar_records) if Path(args.rar_records).is_dir() else None
    write_text(report, study_markdown(archived, rar, args.form))
    print(f"{len(archived)} runs in {records}; tables in {report}")


if __name__ == "__main__":
    main()
