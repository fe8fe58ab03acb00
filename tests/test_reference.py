"""Scores referred to normal images (utils/method/reference.py): the referred maps and their pooling against hand
computations, the p-values' false-alarm guarantee, a reference that
follows its learners, and the published three untouched."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

import eval as evaluate
import predict
import train
from datasets.medad import load_images, read_split
from models import to_model_input
from tests.conftest import run_cli, run_main, write_config
from utils.method import reference as references
from utils.errors import UserError
from utils.run import config
from utils.run.checkpoint import load_learners
from utils.method.dsu import SCORES, image_scores, score_maps
from utils.method.reference import IMAGE_SCORES, REFERRED, reference_statistics, referred_map, referred_scores, \
    top_mean
from tests.test_dsu import ensemble


def maps_of(n, size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(n, 1, size, size, generator=generator).pow(3) * (index + 1)
            for index, name in enumerate(SCORES)}


def test_referred_map_equals_a_hand_computation():
    fit, test = maps_of(30, seed=1), maps_of(5, seed=2)
    statistics = reference_statistics(fit)
    for name in REFERRED:
        values = fit[name].numpy().astype(np.float64)[:, 0]
        spread = values.std(axis=0, ddof=1)
        spread = np.maximum(spread, np.quantile(spread, 0.5))
        new = test[name].numpy().astype(np.float64)[:, 0]
        expected = (new - values.mean(axis=0)) / spread
        np.testing.assert_allclose(referred_map(test[name], statistics[name])[:, 0].numpy(), expected, rtol=1e-4,
                                   atol=1e-4)
        # the floor holds: no pixel's spread is below the quantile
        assert statistics[name]["spread"].min().item() == pytest.approx(np.quantile(
            values.std(axis=0, ddof=1), 0.5), rel=1e-5)


def test_top_mean_smooths_then_averages_the_top_pixels():
    maps = torch.zeros(2, 1, 10, 10)
    maps[0, 0, 4, 4] = 9.0  # one bright pixel: the 3 x 3 box spreads it to 1 over nine pixels
    maps[1, 0, 0, 0] = 9.0  # in a corner, replicate padding counts it four times in the corner box
    smooth = np.zeros((2, 10, 10))
    padded = np.pad(maps[:, 0].numpy(), ((0, 0), (1, 1), (1, 1)), mode="edge")
    for i in range(10):
        for j in range(10):
            smooth[:, i, j] = padded[:, i:i + 3, j:j + 3].mean(axis=(1, 2))
    expected = np.sort(smooth.reshape(2, -1), axis=1)[:, -1:].mean(axis=1)  # 1% of 100 pixels: the top one
    np.testing.assert_allclose(top_mean(maps).numpy(), expected, rtol=1e-6)
    assert top_mean(maps)[0].item() == pytest.approx(1.0) and top_mean(maps)[1].item() == pytest.approx(4.0)
    assert top_mean(maps, share=0.09)[0].item() == pytest.approx(1.0)  # the nine pixels of the box
    assert top_mean(maps, share=0.10)[0].item() == pytest.approx(0.9)  # and one zero


def test_referred_scores_equal_hand_computations():
    fit, test = maps_of(40, seed=3), maps_of(6, seed=4)
    statistics = reference_statistics(fit)
    scores = referred_scores(test, statistics)
    assert list(scores) == list(IMAGE_SCORES) == ["rec", "unc", "dsu", "rec_z_top1", "dsu_z_top1"]
    published = image_scores(test)
    for name in SCORES:
        assert torch.equal(scores[name], published[name])  # the published three, bit for bit
    for name in REFERRED:
        z = referred_map(test[name], statistics[name])
        np.testing.assert_allclose(scores[f"{name}_z_top1"].numpy(), top_mean(z).numpy(), rtol=1e-6)


def test_p_value_formula():
    reference = {"calibration": {"s": torch.tensor([1.0, 2.0, 3.0, 4.0])}}
    p = references.p_values({"s": np.array([0.5, 2.0, 3.5, 9.0])}, reference)["s"]
    np.testing.assert_allclose(p, [5 / 5, 4 / 5, 2 / 5, 1 / 5])  # (1 + #{calibration >= score}) / (n + 1)


def test_flagged_share_of_exchangeable_normal_images_stays_within_binomial_bounds():
    """Split conformal: reference statistics from one half, p-values from the other; on new normal images drawn
    like the reference's, the share flagged at level A averages at most A (and about A), over many draws."""
    generator = torch.Generator().manual_seed(0)
    draws, n_fit, n_calibration, n_test, level = 200, 40, 39, 50, 0.1
    flagged = 0
    for _ in range(draws):
        images = {name: torch.rand(n_fit + n_calibration + n_test, 1, 8, 8, generator=generator).pow(4)
                  for name in SCORES}
        part = lambda start, stop: {name: values[start:stop] for name, values in images.items()}  # noqa: E731
        statistics, calibration = references.fit(part(0, n_fit), part(n_fit, n_fit + n_calibration))
        scores = referred_scores(part(n_fit + n_calibration, None), statistics)
        p = references.p_values({"rec_z_top1": scores["rec_z_top1"].double().numpy()},
                                {"calibration": {"rec_z_top1": calibration["rec_z_top1"]}})["rec_z_top1"]
        flagged += int((p <= level).sum())
    total = draws * n_test
    # With n = 39 calibration images the level 0.1 is reached exactly: P(p <= 0.1) = 4 / 40. Flags of one draw
    # share its calibration set, so the bound allows for that: the variance of the draw means, not of single flags.
    low, high = stats.binom.ppf([0.0005, 0.9995], total, 4 / 40) / total
    spread = 3.3 * np.sqrt((4 / 40) * (36 / 40) / (n_calibration + 2)) / np.sqrt(draws)  # Beta(4, 36) per draw
    assert low - spread <= flagged / total <= high + spread, flagged / total


@pytest.fixture(scope="module")
def held_out_run(tiny_root, tmp_path_factory):
    """A trained (1 epoch, 2 learners) and evaluated run holding a quarter of the tiny set's normals out."""
    folder = tmp_path_factory.mktemp("reference")
    cfg = write_config(folder / "c.yaml", tiny_root, folder / "run", Solver={"num_epoch": 1},
                       Data={"holdout": 0.25})
    train.main(["--config", str(cfg)])
    evaluate.main(["--config", str(cfg)])
    return cfg, folder / "run"


def test_holdout_trains_on_the_rest_and_the_reference_holds_the_held_out_images(held_out_run, tiny_root):
    cfg, run = held_out_run
    reference = torch.load(run / references.FILE, weights_only=True)
    data = json.loads((tiny_root / "tiny" / "data.json").read_text())
    held = reference["fit_files"] + reference["calibration_files"]
    assert len(held) == 12 and set(held) <= set(data["train"]["0"]) and not reference["in_sample"]
    assert not set(held) & set(data["test"]["0"] + data["test"]["1"])
    assert "holding out 12 of 48 normal training images" in (run / "train.log").read_text()
    results = json.loads((run / "results.json").read_text())
    assert results["run"]["holdout"] == 0.25
    assert results["reference"] == {**results["reference"], "in_sample": False, "fit": 6, "calibration": 6}
    assert set(IMAGE_SCORES) <= set(results)
    assert all({"fpr05", "tpr05"} <= set(results[name]) and "fpr05_in_sample" not in results[name]
               for name in IMAGE_SCORES)
    rows = list(csv.DictReader(open(run / "scores.csv")))
    assert list(rows[0]) == ["file", "label", *IMAGE_SCORES]


def test_published_three_in_eval_are_the_maps_means_bit_for_bit(held_out_run, tiny_root):
    """eval.py's rec, unc and dsu are the published computation (score_maps, then the mean), untouched."""
    cfg, run = held_out_run
    learners = load_learners(run, config.load(cfg), torch.device("cpu"))
    split = read_split(tiny_root / "tiny")
    x = to_model_input(load_images(split.directory, split.test, 32))
    published = image_scores(score_maps(learners, x))
    rows = list(csv.DictReader(open(run / "scores.csv")))
    for name in SCORES:
        assert [float(row[name]) for row in rows] == [float(f"{v:.8g}") for v in published[name].tolist()]


def test_a_changed_learner_makes_a_new_reference(held_out_run, tiny_root, tmp_path):
    cfg, run = held_out_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg_copy = write_config(tmp_path / "c.yaml", tiny_root, copy, Solver={"num_epoch": 1},
                            Data={"holdout": 0.25})
    before = torch.load(copy / references.FILE, weights_only=True)
    state = torch.load(copy / "learner_1.pt", weights_only=True)
    state["model"]["decoder.3.weight"] += 0.01  # as if learner 1 were trained again
    torch.save(state, copy / "learner_1.pt")

    result = run_cli("predict.py", "--run", copy, tiny_root / "tiny" / "images", "--out", tmp_path / "out")
    assert result.returncode == 2 and "made with other learners" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    evaluate.main(["--config", str(cfg_copy)])
    after = torch.load(copy / references.FILE, weights_only=True)
    assert after["learners"] != before["learners"] and after["fit_files"] == before["fit_files"]
    assert not torch.equal(after["statistics"]["rec"]["center"], before["statistics"]["rec"]["center"])
    assert "making the normal reference again" in (copy / "eval.log").read_text()
    unchanged = torch.load(run / references.FILE, weights_only=True)
    assert unchanged["learners"] == before["learners"]


def test_predict_writes_p_values_and_flags_at_the_level(held_out_run, tiny_root, tmp_path, capsys):
    cfg, run = held_out_run
    images = tiny_root / "tiny" / "images"
    predict.main(["--run", str(run), str(images), "--out", str(tmp_path / "out"), "--fpr", "0.5", "--score",
                  "rec_z_top1"])
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert list(rows[0]) == ["file", *IMAGE_SCORES, *(f"p_{name}" for name in IMAGE_SCORES), "flagged"]
    calibration = torch.load(run / references.FILE, weights_only=True)["calibration"]["rec_z_top1"].numpy()
    for row in rows:
        score, p = float(row["rec_z_top1"]), float(row["p_rec_z_top1"])
        margin = 1e-6 * abs(score)  # the CSV rounds scores to 8 digits; a calibration image ties with itself
        fewest, most = np.sum(calibration >= score + margin), np.sum(calibration >= score - margin)
        assert (1 + fewest) / (len(calibration) + 1) - 1e-7 <= p <= (1 + most) / (len(calibration) + 1) + 1e-7
        assert row["flagged"] == str(int(p <= 0.5))
    by_score = sorted(rows, key=lambda row: float(row["rec_z_top1"]))
    p_in_order = [float(row["p_rec_z_top1"]) for row in by_score]
    assert p_in_order == sorted(p_in_order, reverse=True)  # a higher score never has a higher p-value
    assert "at p <= 0.5 on rec_z_top1" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, fragment", [
    (["--fpr", "0"], "--fpr must be between 0 and 1, got 0.0"),
    (["--fpr", "1.5"], "--fpr must be between 0 and 1, got 1.5"),
    (["--fpr", "0.1"], "is below 1 / (n + 1) = 0.1429 for this reference's 6 calibration images"),
])
def test_bad_levels_are_refused(held_out_run, tiny_root, tmp_path, arguments, fragment):
    cfg, run = held_out_run
    result = run_main("predict.py", "--run", run, tiny_root / "tiny" / "images", "--out", tmp_path / "out", *arguments)
    assert result.returncode == 2 and fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_in_sample_reference_has_no_p_values_and_refuses_fpr(tiny_root, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", Solver={"num_epoch": 1})
    train.main(["--config", str(cfg)])
    reference = torch.load(tmp_path / "run" / references.FILE, weights_only=True)
    assert reference["in_sample"] and len(reference["fit_files"]) + len(reference["calibration_files"]) == 48
    images = tiny_root / "tiny" / "images"
    result = run_main("predict.py", "--run", tmp_path / "run", images, "--fpr", "0.2")
    assert result.returncode == 2 and "in-sample" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    predict.main(["--run", str(tmp_path / "run"), str(images), "--out", str(tmp_path / "out")])
    assert "no p-values" in capsys.readouterr().out
    header = next(csv.reader(open(tmp_path / "out" / "predictions.csv")))
    assert header == ["file", *IMAGE_SCORES]


def test_old_run_folder_without_a_reference_is_one_line(held_out_run, tmp_path):
    cfg, run = held_out_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / references.FILE).unlink()
    result = run_main("predict.py", "--run", copy, copy, "--out", tmp_path / "out")
    assert result.returncode == 2 and "has no normal reference (reference.pt)" in result.stderr
    assert "python eval.py --config" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in run.iterdir() if p.name != "reference.pt")


def test_a_run_folder_written_before_the_small_core_scores_as_before(held_out_run, tiny_root, tmp_path):
    """A run folder of commit 81a2410: its config.yaml names the removed options at the kept behaviour and Exp.fast,
    its reference was made for the thirteen scores of then (with their statistics). eval.py and predict.py use it as
    it is, and give the same scores as the run folder of today."""
    cfg, run = held_out_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    stored = yaml.safe_load((old / "config.yaml").read_text())
    stored["Exp"]["fast"] = stored["Exp"].pop("cache_seniors") and stored["Exp"].pop("cuda_graph")
    stored["Model"].update(repulsion="linear_cka", repel_on="training")
    stored["Solver"]["spread"] = 0.0
    stored["Exp"]["out_dir"] = str(old)
    (old / "config.yaml").write_text(yaml.safe_dump(stored))
    reference = torch.load(old / references.FILE, weights_only=True)
    reference["definition"] = references.EARLIER_DEFINITIONS[0]
    reference["image_statistics"] = {name: (0.0, 1.0) for name in SCORES}  # fused's, unused now
    for name in ("rec_z", "unc_z_top1", "fused"):  # some of the scores of then that left
        reference["calibration"][name] = reference["calibration"]["rec"] + 1
    torch.save(reference, old / references.FILE)
    images = tiny_root / "tiny" / "images"
    for folder in (run, old):
        predict.main(["--run", str(folder), str(images), "--out", str(tmp_path / folder.name / "out"), "--fpr", "0.5"])
    rows = [list(csv.DictReader(open(tmp_path / folder.name / "out" / "predictions.csv"))) for folder in (run, old)]
    assert rows[0] == rows[1]
    evaluate.main(["--config", str(old / "config.yaml")])
    assert torch.load(old / references.FILE, weights_only=True)["definition"] == references.EARLIER_DEFINITIONS[0]
    assert (old / "scores.csv").read_text() == (run / "scores.csv").read_text()


def test_a_holdout_that_leaves_too_few_training_images_is_refused(tiny_root, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", Data={"holdout": 0.5})
    result = run_main("train.py", "--config", cfg)
    assert result.returncode == 2 and "leaves 24 of 48 normal training images" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    cfg = write_config(tmp_path / "d.yaml", tiny_root, tmp_path / "run", Data={"holdout": 0.6})
    result = run_main("train.py", "--config", cfg)
    assert result.returncode == 2 and "Data.holdout must be between 0 and 0.5" in result.stderr


def test_reference_follows_the_learners_on_any_device_order():
    learners = ensemble("AE", k=2, img_size=32)
    fingerprint = references.learners_fingerprint(learners)
    assert references.learners_fingerprint([learner.to(memory_format=torch.channels_last)
                                            for learner in learners]) == fingerprint
    with torch.no_grad():
        learners[1].decoder[-1].weight.add_(1e-3)
    assert references.learners_fingerprint(learners) != fingerprint


def test_a_non_finite_score_gets_no_p_value():
    """A NaN or infinite image score is not an anomaly: its p-value is NaN, never the smallest one."""
    reference = {"calibration": {"s": torch.tensor([1.0, 2.0, 3.0, 4.0])}}
    p = references.p_values({"s": np.array([np.nan, 2.0, np.inf, -np.inf])}, reference)["s"]
    assert np.isnan(p[0]) and p[1] == pytest.approx(4 / 5) and np.isnan(p[2]) and np.isnan(p[3])


def test_a_reference_with_non_finite_calibration_scores_is_refused():
    reference = {"calibration": {"rec": torch.tensor([1.0, np.nan, 3.0, np.inf]), "unc": torch.tensor([1.0, 2.0])}}
    with pytest.raises(UserError) as refused:
        references.p_values({"rec": np.array([2.0]), "unc": np.array([2.0])}, reference)
    message = str(refused.value)
    assert "rec" in message and "2 of 4" in message and "\n" not in message


def test_predict_never_flags_a_non_finite_score(held_out_run, tiny_root, tmp_path, monkeypatch, capsys):
    cfg, run = held_out_run
    scored = predict.referred_scores

    def first_image_nan(maps, statistics):  # as if the learners gave NaN on the first image
        scores = scored(maps, statistics)
        scores["rec"][0] = float("nan")
        return scores

    monkeypatch.setattr(predict, "referred_scores", first_image_nan)
    predict.main(["--run", str(run), str(tiny_root / "tiny" / "images"), "--out", str(tmp_path / "out"),
                  "--fpr", "0.5", "--overlays", "none"])
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert rows[0]["rec"] == "nan" and rows[0]["p_rec"] == "" and rows[0]["flagged"] == "0"
    assert all(row["p_rec"] for row in rows[1:]) and any(row["flagged"] == "1" for row in rows[1:])
    assert f"1 image(s) with a non-finite rec score (NaN or infinite): no p-value, never flagged: {rows[0]['file']}" \
        in capsys.readouterr().out
