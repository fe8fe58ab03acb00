"""studies/ensemble_size/analysis.py: the gains over k = 3 paired on training set and seed, from archived runs."""
import json

from studies.ensemble_size import analysis as study

SETS = ("FMNIST_c4", "FMNIST_local_c4", "FMNIST_c6", "FMNIST_local_c6")


def run_folder(root, dataset, seed, lam, gain):
    """An evaluated K = 4 run whose dsu AUC grows by `gain` per learner from 0.80 at k = 2 (rec stays at 0.9)."""
    curve = {}
    for k in (2, 3, 4):
        curve[str(k)] = {"rec": {"auc": 0.9, "ap": 0.9}, "unc": {"auc": 0.7, "ap": 0.7},
                         "dsu": {"auc": 0.8 + gain * (k - 2), "ap": 0.8}}
        if "local" in dataset:
            for score, values in curve[str(k)].items():
                values["pixel_auroc"] = 0.8 + (0.01 * (k - 2) if score == "dsu" else 0.0)
    folder = root / f"{dataset}_s{seed}_L{lam}"
    folder.mkdir(parents=True)
    results = {"run": {"dataset": dataset, "seed": seed, "Lambda": lam, "network": "AE"}, "ensemble_size": curve,
               "diagnostics": {"effective_rank": [10.0, 9.0, 8.0, 7.0]},
               "timing": {"score_s": 2.0, "images": 1000, "device": "cpu"}}
    (folder / "results.json").write_text(json.dumps(results))
    epochs = [{"tag": f"learner{j}", "step": 1, "epoch_s": 50.0 + j} for j in range(4) if "local" not in dataset]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in epochs))


def test_the_gain_of_each_k_over_three_is_paired_on_training_set_and_seed(tmp_path):
    runs = tmp_path / "runs"
    for dataset in SETS:
        for seed, gain in ((1, 0.01), (2, 0.03)):
            run_folder(runs, dataset, seed, 0.0, gain)
    run_folder(runs, "FMNIST_c4", 1, 1.0, 0.0)
    study.main(["--runs", str(runs), "--study", str(tmp_path / "study")])
    assert len(list((tmp_path / "study" / "records").glob("*.json"))) == 9
    text = (tmp_path / "study" / "study.md").read_text()
    # dsu image AUC at k = 4 minus k = 3: +0.01 (seed 1) and +0.03 (seed 2) on both classes: mean +0.02 over 4
    # units, sd 0.0115, half width t(0.975, 3) 3.182 x 0.0115 / 2 = 0.018
    assert "| 4 | +0.000 [+0.000, +0.000] (n=4) | +0.000 [+0.000, +0.000] (n=4) | +0.020 [+0.002, +0.038] (n=4) |" \
        in text
    assert "| 2 | +0.000 [+0.000, +0.000] (n=4) | +0.000 [+0.000, +0.000] (n=4) | -0.020 [-0.038, -0.002] (n=4) |" \
        in text
    assert "| 4 | +0.000 [+0.000, +0.000] (n=4) | +0.000 [+0.000, +0.000] (n=4) | +0.010 [+0.010, +0.010] (n=4) |" \
        in text  # pixel AUROC of the local sets
    assert "## d. The published setting" in text and "| published (1 runs) | 10.00 | 9.00 | 8.00 | 7.00 |" in text
    assert "52 s per learner on average (20 learners, 50-53 s" in text and "2.0 s per 1,000 test images" in text


def test_the_report_is_rebuilt_from_its_records_alone(tmp_path):
    runs = tmp_path / "runs"
    for dataset in SETS:
        run_folder(runs, dataset, 1, 0.0, 0.02)
    study.main(["--runs", str(runs), "--study", str(tmp_path / "study")])
    first = (tmp_path / "study" / "study.md").read_text()
    (tmp_path / "study" / "study.md").unlink()
    study.main(["--study", str(tmp_path / "study")])
    assert (tmp_path / "study" / "study.md").read_text() == first
