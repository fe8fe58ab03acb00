"""The scoring study (README, "Scores referred to normal images"): every run of cfgs/grids/score_study.yaml scored
with every score, form and reference on the same learners; the tables in <archive>/study.md.

    python scripts/score_study.py --runs runs/score_study [--archive studies/scores] [--rar-archive studies/rar]
    python scripts/score_study.py --length --runs runs/length --archive studies/length   (the benchmark's length)

For each evaluated run its learners score the test set once, and two references of the same size are made as
utils/method/reference.py makes one (fit and calibration halves): the held-out normal images (Data.holdout) and, for the
comparison, as many training images drawn by the run's seed (in-sample). Every form of FORMS refers the maps. Each
image score's AUC and AP, the shares of normal and abnormal test images flagged at p <= 0.05, and on the local sets
each map's pixel AUROC go into one record per run (<archive>/<run>.json); the tables are made from the archive alone.

Rules fixed before the runs were read:
- the form is chosen on seed 1 alone: the highest mean image AUC over the six referred scores (<s>_z, <s>_z_top1)
  with the held-out reference, over seed 1's runs;
- a new score (with that form and the held-out reference) is recommended when, on seeds 2 and 3, its image AUC
  minus rec's has a 95% interval above zero over the units and a mean of at least zero on the semantic and on the
  local sets; among several, the highest mean. A unit is one training (training set, seed, setting): a class's
  semantic and local set share their learners, so their differences are averaged first.
"""
import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.medad import dataset_dir, load_images, load_masks, read_split, reference_files  # noqa: E402
from datasets.prepare.fashion_mnist import parse_set_name, set_name  # noqa: E402
from utils.atomic import atomic_write_text  # noqa: E402
from utils.errors import UserError, cli  # noqa: E402
from utils.method import reference as references  # noqa: E402
from utils.method.ensemble import score_dataset  # noqa: E402
from utils.method.scores import IMAGE_SCORES, MAPS, SCORES, Form, referred_scores  # noqa: E402
from studies.common import mean_interval, rar_results  # noqa: E402
from utils.report.metrics import image_metrics  # noqa: E402
from utils.run.checkpoint import load_run  # noqa: E402
from utils.run.runtime import pick_device  # noqa: E402

FORMS = {"linear q0": Form(log=False, floor=0.0), "linear q0.1": Form(log=False, floor=0.1),
         "linear q0.5": Form(log=False, floor=0.5), "log q0": Form(log=True, floor=0.0),
         "log q0.1": Form(log=True, floor=0.1), "log q0.5": Form(log=True, floor=0.5)}
REFERENCES = ("held_out", "in_sample")
LEVEL = 0.05
CHOOSING_SEEDS, CONFIRMING_SEEDS = (1,), (2, 3)
NEW = tuple(name for name in IMAGE_SCORES if name not in SCORES)
CHOSEN_ON = [f"{name}_z" for name in SCORES] + [f"{name}_z_top1" for name in SCORES]
SETTINGS = {(1.0, False): "published (Lambda 1)", (0.0, True): "Lambda 0 + precise BN"}


# ---------------------------------------------------------------- scoring one run

def score_references(learners, run_cfg, split, device) -> dict:
    """{reference kind: (fit maps, calibration maps)}: the held-out reference and an in-sample one of its size."""
    held, in_sample = reference_files(split.train, run_cfg)
    if in_sample:
        raise UserError(f"{run_cfg.run_dir} holds no images out (Data.holdout=0); the study needs a holdout")
    train = [name for name in split.train if name not in set(held)]
    drawn = torch.randperm(len(train), generator=torch.Generator().manual_seed(run_cfg.Solver.seed))[:len(held)]
    chosen = {"held_out": held, "in_sample": [train[i] for i in sorted(drawn.tolist())]}
    maps = {}
    for kind, files in chosen.items():
        images = load_images(split.directory, files, run_cfg.Data.img_size, run_cfg.Exp.workers or None)
        fit_half, calibration_half = references.halves(len(files), run_cfg.Solver.seed)
        maps[kind] = tuple(score_dataset(learners, images[half], run_cfg.Exp.score_batch, device)[0]
                           for half in (fit_half, calibration_half))
    return maps


def pixel_auroc(masks, values) -> float:
    return float(roc_auc_score(masks.reshape(-1), values.reshape(-1).double().numpy()))


def score_run(run_dir, device) -> dict:
    """The record of one evaluated run: every score, form and reference on its learners."""
    began = time.perf_counter()
    run_cfg, learners = load_run(run_dir, device)
    split = read_split(dataset_dir(run_cfg.Data.root, run_cfg.Data.dataset))
    images = load_images(split.directory, split.test, run_cfg.Data.img_size, run_cfg.Exp.workers or None)
    labels = np.asarray(split.test_labels)
    maps, _ = score_dataset(learners, images, run_cfg.Exp.score_batch, device)
    masks = None
    if split.has_masks:
        masks = load_masks(split.directory, split.test, run_cfg.Data.img_size, run_cfg.Exp.workers or None).numpy()
    raw_pixel = {name: pixel_auroc(masks, maps[name]) for name in SCORES} if masks is not None else {}
    results = json.loads((Path(run_dir) / "results.json").read_text())
    record = {"run": results["run"], "diagnostics": diagnostics_of(results), "references": {}}
    for kind, (fit_maps, calibration_maps) in score_references(learners, run_cfg, split, device).items():
        forms = {}
        for form_name, form in FORMS.items():
            statistics, image_stats, calibration = references.fit(fit_maps, calibration_maps, form)
            referred, scores = referred_scores(maps, statistics, image_stats)
            scores = {name: value.numpy().astype(np.float64) for name, value in scores.items()}
            p = references.p_values(scores, {"calibration": calibration})
            table = {}
            for name in IMAGE_SCORES:
                table[name] = {**image_metrics(labels, scores[name]),
                               "fpr05": float(np.mean(p[name][labels == 0] <= LEVEL)),
                               "tpr05": float(np.mean(p[name][labels == 1] <= LEVEL))}
            if masks is not None:
                for name in MAPS:
                    table[name]["pixel_auroc"] = raw_pixel[name] if name in SCORES else pixel_auroc(masks,
                                                                                                  referred[name])
            forms[form_name] = table
        record["references"][kind] = {"n": len(fit_maps["rec"]) + len(calibration_maps["rec"]), "forms": forms}
    record["seconds"] = time.perf_counter() - began
    return record


def diagnostics_of(results) -> dict:
    """What the tables need of eval's diagnostics: each learner's effective rank of its test features, its error in
    eval mode over train mode on training images (the precise-BN check), and the warnings."""
    diagnostics = results["diagnostics"]
    return {"effective_rank": diagnostics["effective_rank"],
            "eval_over_train": [report["eval_mse"] / report["train_mse"] if report else None
                                for report in diagnostics["learners"]],
            "warnings": diagnostics["warnings"]}


def archive_runs(runs, archive, device) -> list:
    """Score every evaluated run under `runs` not yet in the archive; returns the names archived now."""
    archive.mkdir(parents=True, exist_ok=True)
    done = []
    for results in sorted(Path(runs).glob("*/results.json")):
        target = archive / f"{results.parent.name}.json"
        if target.is_file():
            record = json.loads(target.read_text())
            if "diagnostics" not in record:  # archived before the records kept them: the run's results.json has them
                record["diagnostics"] = diagnostics_of(json.loads(results.read_text()))
                atomic_write_text(target, json.dumps(record, indent=1))
            continue
        record = score_run(results.parent, device)
        atomic_write_text(target, json.dumps(record, indent=1))
        print(f"archived {results.parent.name} ({record['seconds']:.0f} s)", file=sys.stderr)
        done.append(results.parent.name)
    return done


# ---------------------------------------------------------------- tables

def load_archive(archive) -> list:
    return [json.loads(path.read_text()) for path in sorted(Path(archive).glob("*.json"))]


def kind_of(dataset) -> str:
    parsed = parse_set_name(dataset)
    return parsed[1] if parsed else "semantic"


def training_set(dataset) -> str:
    """The data set whose training images `dataset` trains on: a local set's semantic twin."""
    parsed = parse_set_name(dataset)
    return set_name(parsed[0]) if parsed else dataset


def unit_of(run) -> tuple:
    """(training set, seed, setting): a semantic set and its local twin share their learners."""
    return (training_set(run["dataset"]), run["seed"], setting_of(run))


def over_units(units) -> dict | None:
    """{unit: [differences]} -> the mean over units of each unit's mean, its 95% t interval and the unit count."""
    if not units:
        return None
    mean, low, high = mean_interval([np.mean(values) for values in units.values()])
    return {"mean": mean, "low": low, "high": high, "n": len(units)}


def setting_of(run) -> str:
    return SETTINGS.get((float(run["Lambda"]), bool(run.get("precise_bn", False))), f"Lambda {run['Lambda']}")


def metric(record, reference, form, score, name="auc"):
    return record["references"][reference]["forms"][form][score].get(name)


def paired(records, value, seeds=None, kind=None):
    """The mean over units of value(record) (None skips a record), with its 95% t interval and the unit count."""
    units = defaultdict(list)
    for record in records:
        run = record["run"]
        if (seeds is None or run["seed"] in seeds) and kind in (None, kind_of(run["dataset"])):
            difference = value(record)
            if difference is not None:
                units[unit_of(run)].append(difference)
    return over_units(units)


def shown(difference) -> str:
    if difference is None:
        return "-"
    if difference["low"] is None:
        return f"{difference['mean']:+.3f} (n={difference['n']})"
    return f"{difference['mean']:+.3f} [{difference['low']:+.3f}, {difference['high']:+.3f}] (n={difference['n']})"


def table(header, rows) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


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


def rar_archive_auc(rar_archive, run, score) -> float | None:
    """The same run's image AUC without a holdout, from the RAR study's archive."""
    results = rar_results(rar_archive, run)
    return None if results is None else results[score]["auc"]


def setting_difference(records, form, score, name="auc", kind=None):
    """Lambda 0 + precise BN minus the published setting, paired on (data set, seed), with the semantic and local set
    of one training set and seed averaged first; mean over (training set, seed) with its 95% t interval."""
    published, plain = SETTINGS.values()
    values = defaultdict(dict)
    for record in records:
        run = record["run"]
        if kind in (None, kind_of(run["dataset"])):
            values[(run["dataset"], run["seed"])][setting_of(run)] = metric(record, "held_out", form, score, name)
    units = defaultdict(list)
    for (dataset, seed), by_setting in values.items():
        if by_setting.get(published) is not None and by_setting.get(plain) is not None:
            units[(training_set(dataset), seed)].append(by_setting[plain] - by_setting[published])
    return over_units(units)


def settings_sections(records, form, heading) -> list:
    """Tables h and i: the two settings against each other, and what the learners look like under each."""
    published, plain = SETTINGS.values()
    rows = [[name, *(shown(setting_difference(records, form, name, kind=kind)) for kind in (None, "semantic", "local"))]
            for name in IMAGE_SCORES]
    rows += [[f"{name} pixel AUROC", "-", "-", shown(setting_difference(records, form, name, "pixel_auroc", "local"))]
             for name in MAPS]
    lines = [f"{heading} h. {plain} minus {published}: image AUC ({form}, held-out reference), pixel AUROC on the "
             "local sets", "", *table(["score", "all sets", "semantic", "local"], rows), ""]
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
              *table(["setting", "runs", "effective rank, learner 0", "effective rank, juniors (mean)",
                      "largest eval/train-mode error ratio of a run (mean)", "warnings"], rows), ""]
    return lines


def study_markdown(records, rar_archive=None, form=None) -> str:
    """The tables, one set per backbone; `form` fixes the form instead of choosing it on these records' seed 1."""
    networks = sorted({r["run"]["network"] for r in records})
    seeds = sorted({r["run"]["seed"] for r in records})
    lines = [f"# The scoring study: {', '.join(networks)}", "",
             f"{len(records)} runs archived ({', '.join(networks)}; seeds {', '.join(map(str, seeds))}; "
             f"{len({(r['run']['network'], *unit_of(r['run'])) for r in records})} trainings). Made by "
             "scripts/score_study.py from the archive alone; differences are means over units (training set, seed, "
             "setting) with 95% t intervals.", ""]
    for network in networks:
        ours = [r for r in records if r["run"]["network"] == network]
        if len(networks) > 1:
            lines += [f"## {network}", ""]
        lines += network_sections(ours, rar_archive, form, "###" if len(networks) > 1 else "##")
    return "\n".join(lines)


def network_sections(records, rar_archive, fixed_form, heading) -> list:
    form, rows = choose_form(records)
    lines = [f"{heading} a. The form, chosen on seed 1 (held-out reference): mean image AUC", "",
             *table(["form", *CHOSEN_ON, "mean of the six"], rows), "",
             f"Chosen: **{form}**." if form else "No run of seed 1 yet: no form chosen.", ""]
    if fixed_form:
        form = fixed_form
        lines += [f"The tables below use **{form}**, fixed by --form (the AE study's choice).", ""]
    if form is None:
        return lines
    best, rows = decision(records, form)
    lines += [f"{heading} b. The decision: each new score minus rec, image AUC ({form}, held-out reference)", "",
              *table(["score", "seeds 2-3, all sets", "seeds 2-3, semantic", "seeds 2-3, local", "all seeds, all sets",
                      "passes"], rows), "",
              f"**Recommended: {best}.**" if best else "**No new score passes.**", ""]
    rows = []
    for score, baseline in (("dsu_z", "rec"), ("dsu_z", "dsu"), ("dsu_z_top1", "dsu"), ("dsu", "rec")):
        rows.append([f"{score} - {baseline}", *(shown(difference_to(records, score, baseline, form, kind=kind))
                                               for kind in (None, "semantic", "local"))])
    lines += [f"{heading} c. dsu referred to normal images (all seeds)", "",
              *table(["difference", "all sets", "semantic", "local"], rows), ""]
    rows = []
    for name in [n for n in IMAGE_SCORES]:
        means = {setting: [metric(r, "held_out", form, name) for r in records if setting_of(r["run"]) == setting]
                 for setting in SETTINGS.values()}
        by_kind = {kind: [metric(r, "held_out", form, name) for r in records if kind_of(r["run"]["dataset"]) == kind]
                   for kind in ("semantic", "local")}
        rows.append([name, *(f"{np.mean(values):.3f}" if values else "-"
                             for values in (*means.values(), *by_kind.values()))])
    lines += [f"{heading} d. Mean image AUC per score ({form}, held-out reference, all seeds)", "",
              *table(["score", *SETTINGS.values(), "semantic sets", "local sets"], rows), ""]
    rows = []
    for name in ("rec", "dsu", "rec_z", "dsu_z", "rec_z_top1", "dsu_z_top1", "fused"):
        def held_minus_in(record, name=name):
            return metric(record, "held_out", form, name) - metric(record, "in_sample", form, name)
        fpr = {kind: np.mean([metric(r, kind, form, name, "fpr05") for r in records]) for kind in REFERENCES}
        rows.append([name, shown(paired(records, held_minus_in)), f"{fpr['held_out']:.3f}", f"{fpr['in_sample']:.3f}"])
    lines += [f"{heading} e. Held-out against in-sample reference (same learners, same size; {form})", "",
              *table(["score", "AUC held-out - in-sample", "normal test images flagged at p <= 0.05, held-out",
                      "the same, in-sample"], rows), ""]
    rows = []
    for score in SCORES:
        def holdout_cost(record, score=score):
            without = rar_archive_auc(rar_archive, record["run"], score)
            return None if without is None else metric(record, "held_out", form, score) - without
        rows.append([score, *(shown(paired(records, holdout_cost, kind=kind)) for kind in (None, "semantic", "local"))])
    lines += [f"{heading} f. What holding out 10% costs: image AUC with Data.holdout=0.1 minus the RAR study's runs "
              "without", "", *table(["score", "all sets", "semantic", "local"], rows), ""]
    local = [r for r in records if kind_of(r["run"]["dataset"]) == "local"]
    rows = []
    for form_name in FORMS:
        pixel = [[metric(r, "held_out", form_name, name, "pixel_auroc") for r in local] for name in MAPS]
        rows.append([form_name, *(f"{np.mean(values):.3f}" if local else "-" for values in pixel)])
    lines += [f"{heading} g. Pixel AUROC on the local sets (held-out reference), raw maps and referred ones, per form",
              "", *table(["form", *MAPS], rows), ""]
    return lines + settings_sections(records, form, heading)


# ---------------------------------------------------------------- the benchmark's length (cfgs/grids/length.yaml)

def length_record(results) -> dict:
    """What the length table needs of one run's results.json (those runs hold nothing out: the published scores)."""
    return {"run": results["run"], "diagnostics": diagnostics_of(results),
            "scores": {name: {key: results[name][key] for key in ("auc", "pixel_auroc") if key in results[name]}
                       for name in SCORES}}


def archive_length(runs, archive) -> None:
    archive.mkdir(parents=True, exist_ok=True)
    for results in sorted(Path(runs).glob("*/results.json")):
        atomic_write_text(archive / f"{results.parent.name}.json",
                          json.dumps(length_record(json.loads(results.read_text())), indent=1))


def rar_counterpart(rar_archive, run) -> dict | None:
    """The RAR study's run of the same data set, backbone, setting and seed (30 epochs), as a length record."""
    results = rar_results(rar_archive, run)
    return None if results is None else length_record(results)


def length_markdown(records, rar_archive) -> str:
    """Lambda 0 minus Lambda 1 at the benchmark's length against the same at 30 epochs (the RAR study's runs)."""
    by_run = {(r["run"]["dataset"], r["run"]["seed"], float(r["run"]["Lambda"])): r for r in records}
    pairs = [(key[:2], by_run[key], by_run[(*key[:2], 1.0)]) for key in by_run
             if key[2] == 0.0 and (*key[:2], 1.0) in by_run]

    def gap(score, name, long, kind=None):
        units = defaultdict(list)
        for (dataset, seed), plain, published in pairs:
            if kind not in (None, kind_of(dataset)):
                continue
            if not long:
                plain, published = rar_counterpart(rar_archive, plain["run"]), rar_counterpart(rar_archive,
                                                                                              published["run"])
                if plain is None or published is None:
                    continue
            ours, theirs = plain["scores"][score].get(name), published["scores"][score].get(name)
            if ours is not None and theirs is not None:
                units[(training_set(dataset), seed)].append(ours - theirs)
        return over_units(units)

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
             *table(["score", "sets", "30 epochs", f"{'/'.join(map(str, epochs))} epochs"], rows), ""]
    rows = []
    for lam in (1.0, 0.0):
        long = [r for r in records if float(r["run"]["Lambda"]) == lam]
        short = [c for c in (rar_counterpart(rar_archive, r["run"]) for r in long) if c is not None]
        ranks = [[np.mean(r["diagnostics"]["effective_rank"][1:]) for r in rs] for rs in (short, long)]
        rows.append([f"Lambda {lam:g}", *(f"{np.mean(values):.2f} (n={len(values)})" if values else "-"
                                          for values in ranks)])
    lines += ["Juniors' effective rank of their test features (mean over runs):", "",
              *table(["setting", "30 epochs", f"{'/'.join(map(str, epochs))} epochs"], rows), ""]
    return "\n".join(lines)


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", help="the grid folder to score (runs/score_study)")
    parser.add_argument("--archive", default="studies/scores", help="folder of the per-run records and study.md")
    parser.add_argument("--rar-archive", default="studies/rar/records", help="the RAR study's records, for table f")
    parser.add_argument("--form", choices=list(FORMS), help="use this form instead of choosing one on seed 1")
    parser.add_argument("--length", action="store_true",
                        help="the runs are cfgs/grids/length.yaml's: compare them with the RAR study's 30-epoch runs")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    archive = Path(args.archive)
    if args.length:
        if args.runs:
            archive_length(args.runs, archive)
        records = load_archive(archive)
        if not records:
            raise UserError(f"no records in {archive}; pass --runs with evaluated runs")
        atomic_write_text(archive / "study.md", length_markdown(records, Path(args.rar_archive)))
        print(f"{len(records)} runs in {archive}; tables in {archive / 'study.md'}")
        return
    if args.runs:
        archive_runs(args.runs, archive, pick_device(args.device))
    records = load_archive(archive)
    if not records:
        raise UserError(f"no records in {archive}; pass --runs with evaluated runs")
    rar = Path(args.rar_archive) if Path(args.rar_archive).is_dir() else None
    atomic_write_text(archive / "study.md", study_markdown(records, rar, args.form))
    print(f"{len(records)} runs in {archive}; tables in {archive / 'study.md'}")


if __name__ == "__main__":
    main()
