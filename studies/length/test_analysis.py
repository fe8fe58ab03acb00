"""studies/length/analysis.py: the gap between the settings at the benchmark's length beside the same gap at 30
epochs (the RAR study's records); and its report, rebuilt from its records."""
import json
from pathlib import Path

from studies.length import analysis as study

STUDIES = Path(__file__).resolve().parents[1]
SETS = ("FMNIST_c4", "FMNIST_local_c4", "FMNIST_c6", "FMNIST_local_c6")


def results_json(dataset, lam, epochs, dsu, rank):
    """A results.json of a run without a holdout: the published three only."""
    scores = {"rec": {"auc": 0.9}, "unc": {"auc": 0.8}, "dsu": {"auc": dsu}}
    if "local" in dataset:
        for values in scores.values():
            values["pixel_auroc"] = 0.85
    return {**scores, "run": {"dataset": dataset, "network": "AE", "Lambda": lam, "precise_bn": False, "seed": 1,
                              "num_epoch": epochs},
            "diagnostics": {"effective_rank": [10.0, rank, rank], "learners": [None, None, None], "warnings": []}}


def test_the_length_table_compares_the_gap_with_the_rar_studys_30_epoch_runs(tmp_path):
    runs, rar = tmp_path / "runs", tmp_path / "rar" / "rar_screen"
    rar.mkdir(parents=True)
    for dataset in SETS:
        for lam, short_dsu, long_dsu, rank in ((1.0, 0.80, 0.82, 1.1), (0.0, 0.84, 0.83, 11.0)):
            name = f"{dataset}_AE_precise_bnfalse_Lambda{lam:g}_s1"
            (rar / f"{name}.json").write_text(json.dumps({"results": results_json(dataset, lam, 30, short_dsu, rank)}))
            (runs / name).mkdir(parents=True)
            (runs / name / "results.json").write_text(json.dumps(results_json(dataset, lam, 160, long_dsu, rank + 1)))
    study.main(["--runs", str(runs), "--study", str(tmp_path / "length"), "--rar-records", str(tmp_path / "rar")])
    text = (tmp_path / "length" / "study.md").read_text()
    # dsu: Lambda 0 minus Lambda 1 is +0.04 at 30 epochs and +0.01 at 160, over the two classes
    assert "| dsu image AUC | all sets | +0.040 [+0.040, +0.040] (n=2) | +0.010 [+0.010, +0.010] (n=2) |" in text
    assert "| rec pixel AUROC | local | +0.000 [+0.000, +0.000] (n=2) |" in text
    assert "| Lambda 1 | 1.10 (n=4) | 2.10 (n=4) |" in text and "| Lambda 0 | 11.00 (n=4) | 12.00 (n=4) |" in text


def test_the_report_is_rebuilt_from_the_records_alone():
    records = [json.loads(path.read_text()) for path in sorted((STUDIES / "length" / "records").glob("*.json"))]
    assert study.length_markdown(records, STUDIES / "rar" / "records") == \
        (STUDIES / "length" / "study.md").read_text()
