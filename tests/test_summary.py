"""Summary over seeds: means and stds against NumPy, CSV round trip, corrupt files skipped, empty tree refused."""
import csv
import json

import numpy as np
import pytest

import eval as evaluate
from utils.errors import UserError
from utils.grid import summary


def _write_run(root, name, seed, lr, auc_shift, with_pixels=False):
    run = {"dataset": "rsna", "network": "AE", "seed": seed, "num_learners": 3, "img_size": 64,
           "num_epoch": 250, "lr": lr, "Lambda": 1.0, "out_dir": f"runs/{name}"}
    result = {"run": run}
    for offset, score in enumerate(["dsu", "rec", "unc"]):  # deliberately not in display order
        metrics = {"auc": 0.6 + 0.1 * offset + auc_shift, "ap": 0.5 + 0.1 * offset + auc_shift / 2,
                   "fdp10": 0.05 * offset + auc_shift, "power10": 0.4 + auc_shift * 3}
        if with_pixels:
            metrics.update(pixel_auroc=0.9 + auc_shift, pixel_ap=0.3, pixel_best_dice=0.35)
        result[score] = metrics
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(result))
    return result


@pytest.fixture
def tree(tmp_path):
    runs = [
        _write_run(tmp_path, "a/rsna_AE_s8", seed=8, lr=5e-4, auc_shift=0.01, with_pixels=True),
        _write_run(tmp_path, "a/rsna_AE_s10", seed=10, lr=5e-4, auc_shift=0.04, with_pixels=True),
        _write_run(tmp_path, "b/rsna_AE_lr1e-3_s2", seed=2, lr=1e-3, auc_shift=0.0),
    ]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text('{"rec": {"auc": 0.7')
    return tmp_path, runs


def test_collect_skips_corrupt_file_with_warning(tree, capsys):
    root, _ = tree
    results = summary.collect(root)
    assert len(results) == 3
    assert [result["run"]["seed"] for result in results] == [10, 8, 2]  # sorted by path
    warning = capsys.readouterr().err
    assert "warning: skipping" in warning and "broken" in warning


def test_summarize_means_and_stds_match_numpy(tree):
    root, runs = tree
    rows = summary.summarize(summary.collect(root))
    assert len(rows) == 6
    assert [row["score"] for row in rows] == ["rec", "unc", "dsu"] * 2
    assert [row["config"] for row in rows] == ["lr=0.0005"] * 3 + ["lr=0.001"] * 3
    for row in rows[:3]:
        assert row["n_seeds"] == 2 and row["seeds"] == [8, 10]
        for metric in ["auc", "ap", "fdp10", "power10", "pixel_auroc", "pixel_ap", "pixel_best_dice"]:
            values = np.array([run[row["score"]][metric] for run in runs[:2]])
            assert row[f"{metric}_mean"] == pytest.approx(values.mean())
            assert row[f"{metric}_std"] == pytest.approx(values.std(ddof=1))
        assert row["auc_std"] > 0
    for row in rows[3:]:
        assert row["n_seeds"] == 1 and row["seeds"] == [2]
        assert row["auc_mean"] == pytest.approx(runs[2][row["score"]]["auc"])
        assert row["auc_std"] == 0.0
        assert "pixel_auroc_mean" not in row


def test_write_summary_markdown_and_csv_round_trip(tree):
    root, _ = tree
    md_path, csv_path = summary.write_summary(root)
    rows = summary.summarize(summary.collect(root))
    with open(csv_path, newline="") as handle:
        parsed = list(csv.DictReader(handle))
    assert len(parsed) == len(rows)
    for row, back in zip(rows, parsed):
        assert back["score"] == row["score"] and back["dataset"] == "rsna" and back["network"] == "AE"
        assert int(back["n_seeds"]) == row["n_seeds"]
        assert back["seeds"].split() == [str(seed) for seed in row["seeds"]]
        assert float(back["auc_mean"]) == pytest.approx(row["auc_mean"])
        assert float(back["ap_std"]) == pytest.approx(row["ap_std"])
        assert (back["pixel_auroc_mean"] == "") == ("pixel_auroc_mean" not in row)

    lines = md_path.read_text().splitlines()
    assert lines[0].startswith("| dataset | network | config | score |")
    assert len(lines) == 2 + len(rows)
    first = rows[0]
    assert f"{first['auc_mean']:.3f} ± {first['auc_std']:.3f}" in lines[2]
    assert lines[-1].endswith("| - | - | - |")  # the run without masks has no pixel metrics


def test_main_prints_table(tree, capsys):
    root, _ = tree
    evaluate.main(["--summary", str(root)])
    out = capsys.readouterr().out
    assert out.startswith("| dataset |") and out.count("\n") == 8


def test_empty_tree_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no readable results.json"):
        summary.write_summary(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--summary", str(tmp_path / "missing")])
    assert exit_info.value.code == 2


def test_split_is_part_of_the_config_and_marked(tmp_path):
    """Runs on another split are never pooled with benchmark runs; rows off the benchmark are marked; an old
    results.json without "split" is an unknown split, not an error."""
    def run(name, seed, split, auc):
        result = {"run": {"dataset": "rsna", "network": "AE", "seed": seed, "out_dir": name},
                  "rec": {"auc": auc, "ap": 0.5}}
        if split is not None:
            result["run"]["split"] = split
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(result))

    run("bench_s1", 1, "benchmark RSNA", 0.70)
    run("bench_s2", 2, "benchmark RSNA", 0.80)
    run("custom_s1", 1, "custom", 0.90)
    run("old_s1", 1, None, 0.60)
    rows = summary.summarize(summary.collect(tmp_path))
    by_split = {row["split"]: row for row in rows}
    assert len(rows) == 3 and set(by_split) == {"benchmark RSNA", "custom", None}
    assert by_split["benchmark RSNA"]["n_seeds"] == 2
    assert by_split["benchmark RSNA"]["auc_mean"] == pytest.approx(0.75)
    assert by_split["custom"]["auc_mean"] == pytest.approx(0.90)
    assert all(row["config"] == "" for row in rows)  # the split has its own mark, not a config column

    md_path, csv_path = summary.write_summary(tmp_path)
    cells = {line.split(" | ")[0].lstrip("| ") for line in md_path.read_text().splitlines()[2:]}
    assert cells == {"rsna", "rsna (custom split)", "rsna (split not recorded)"}
    with open(csv_path, newline="") as handle:
        assert sorted(row["split"] for row in csv.DictReader(handle)) == ["", "benchmark RSNA", "custom"]
