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
from utils.method.dsu import SCORES, image_scores, score_dataset, score_maps
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
    assert results["reference"] == {**results["reference"], "in_sample": False, "fit": 6}
    assert set(IMAGE_SCORES) <= set(results)
    assert all({"fpr05", "tpr05", "fdp10", "power10", "p_min"} <= set(results[name])
               and not any(key.endswith("_in_sample") for key in results[name]) for name in IMAGE_SCORES)
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
    (["--fpr", "0.1", "--score", "rec_z_top1"], "is below 1 / (n + 1) = 0.1429 for the 6 calibration images of "
                                                 "rec_z_top1"),
    (["--fpr", "0.07"], "is below 1 / (n + 1) = 0.07692 for the 12 calibration images of rec"),
    (["--fdr", "0"], "--fdr must be between 0 and 1, got 0.0"),
    (["--fdr", "1"], "--fdr must be between 0 and 1, got 1.0"),
])
def test_bad_levels_are_refused(held_out_run, tiny_root, tmp_path, arguments, fragment):
    cfg, run = held_out_run
    result = run_main("predict.py", "--run", run, tiny_root / "tiny" / "images", "--out", tmp_path / "out", *arguments)
    assert result.returncode == 2 and fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_fpr_and_fdr_are_exclusive(held_out_run, tiny_root, tmp_path):
    cfg, run = held_out_run
    result = run_main("predict.py", "--run", run, tiny_root / "tiny" / "images", "--fdr", "0.1", "--fpr", "0.1")
    assert result.returncode == 2 and "argument --fpr: not allowed with argument --fdr" in result.stderr


def test_in_sample_reference_has_no_p_values_and_refuses_fpr(tiny_root, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", Solver={"num_epoch": 1})
    train.main(["--config", str(cfg)])
    reference = torch.load(tmp_path / "run" / references.FILE, weights_only=True)
    assert reference["in_sample"] and len(reference["fit_files"]) + len(reference["calibration_files"]) == 48
    images = tiny_root / "tiny" / "images"
    for flag in ("--fpr", "--fdr"):
        result = run_main("predict.py", "--run", tmp_path / "run", images, flag, "0.2")
        assert result.returncode == 2 and "in-sample" in result.stderr and f"{flag} needs a run" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
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


# The definitions of references made before: at commit 81a2410 (thirteen scores), and before every held-out image
# calibrated the raw scores.
OLD_DEFINITIONS = ("linear, floor q0.5; log eps 0.01 x mean; top 0.01 of a 3x3 box; scores rec unc dsu rec_top1 "
                   "unc_top1 dsu_top1 rec_z unc_z dsu_z rec_z_top1 unc_z_top1 dsu_z_top1 fused",
                   "linear, floor q0.5; top 0.01 of a 3x3 box; scores rec unc dsu rec_z_top1 dsu_z_top1")


def test_a_run_folder_written_before_the_small_core_loads_and_scores_as_before(held_out_run, tiny_root, tmp_path):
    """A run folder of commit 81a2410: its config.yaml names the removed options at the kept behaviour and Exp.fast,
    its reference was made for the thirteen scores of then. The folder still loads; its reference is stale, as is one
    made before every held-out image calibrated rec, unc and dsu: predict.py refuses it in one line with the command
    that makes it again, eval.py makes it again, and then both give what the run folder of today gives."""
    cfg, run = held_out_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    stored = yaml.safe_load((old / "config.yaml").read_text())
    stored["Exp"]["fast"] = stored["Exp"].pop("cache_seniors") and stored["Exp"].pop("cuda_graph")
    stored["Model"].update(repulsion="linear_cka", repel_on="training")
    stored["Solver"]["spread"] = 0.0
    stored["Exp"]["out_dir"] = str(old)
    (old / "config.yaml").write_text(yaml.safe_dump(stored))
    images = tiny_root / "tiny" / "images"
    for definition in reversed(OLD_DEFINITIONS):  # the 81a2410 one stays for eval.py
        reference = torch.load(run / references.FILE, weights_only=True)
        reference["definition"] = definition
        torch.save(reference, old / references.FILE)
        result = run_main("predict.py", "--run", old, images, "--out", tmp_path / "refused")
        assert result.returncode == 2 and "made for other score definitions" in result.stderr, result.stderr
        assert f"python eval.py --config {old / 'config.yaml'} makes it again" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "refused").exists()
    evaluate.main(["--config", str(old / "config.yaml")])
    assert torch.load(old / references.FILE, weights_only=True)["definition"] == references.DEFINITION
    assert "making the normal reference again" in (old / "eval.log").read_text()
    assert (old / "scores.csv").read_text() == (run / "scores.csv").read_text()
    for folder in (run, old):
        predict.main(["--run", str(folder), str(images), "--out", str(tmp_path / folder.name / "out"), "--fpr", "0.5"])
    rows = [list(csv.DictReader(open(tmp_path / folder.name / "out" / "predictions.csv"))) for folder in (run, old)]
    assert rows[0] == rows[1]


def test_raw_scores_are_calibrated_by_every_held_out_image(held_out_run, tiny_root, tmp_path):
    """rec, unc and dsu need no fit half: all 12 held-out images calibrate them, their scores taken from the pass that
    fits the referred scores' statistics; rec_z_top1 and dsu_z_top1 keep the 6 of the calibration half."""
    cfg, run = held_out_run
    reference = torch.load(run / references.FILE, weights_only=True)
    held = reference["fit_files"] + reference["calibration_files"]
    learners = load_learners(run, config.load(cfg), torch.device("cpu"))
    split = read_split(tiny_root / "tiny")
    maps = score_dataset(learners, load_images(split.directory, held, 32), 16, torch.device("cpu")).maps
    direct = image_scores(maps)
    for name in SCORES:
        np.testing.assert_allclose(np.sort(reference["calibration"][name].numpy()),
                                   np.sort(direct[name].double().numpy()), rtol=1e-6)
    for name in REFERRED:
        assert len(reference["calibration"][f"{name}_z_top1"]) == 6
    results = json.loads((run / "results.json").read_text())
    assert results["reference"]["calibration"] == {"rec": 12, "unc": 12, "dsu": 12, "rec_z_top1": 6, "dsu_z_top1": 6}
    assert results["rec"]["p_min"] == pytest.approx(1 / 13) and results["rec_z_top1"]["p_min"] == pytest.approx(1 / 7)
    predict.main(["--run", str(run), str(tiny_root / "tiny" / "images"), "--out", str(tmp_path / "out")])
    calibration = np.sort(direct["rec"].double().numpy())
    for row in csv.DictReader(open(tmp_path / "out" / "predictions.csv")):
        score = float(row["rec"])
        margin = 1e-6 * abs(score)  # the CSV rounds scores to 8 digits; a held-out image ties with itself
        fewest, most = np.sum(calibration >= score + margin), np.sum(calibration >= score - margin)
        assert (1 + fewest) / 13 - 1e-7 <= float(row["p_rec"]) <= (1 + most) / 13 + 1e-7


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


@pytest.mark.parametrize("flag", [["--fpr", "0.5"], ["--fdr", "0.9"]])
def test_predict_never_flags_a_non_finite_score(held_out_run, tiny_root, tmp_path, monkeypatch, capsys, flag):
    cfg, run = held_out_run
    scored = predict.referred_scores

    def first_image_nan(maps, statistics):  # as if the learners gave NaN on the first image
        scores = scored(maps, statistics)
        scores["rec"][0] = float("nan")
        return scores

    monkeypatch.setattr(predict, "referred_scores", first_image_nan)
    predict.main(["--run", str(run), str(tiny_root / "tiny" / "images"), "--out", str(tmp_path / "out"), *flag,
                  "--overlays", "none"])
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert rows[0]["rec"] == "nan" and rows[0]["p_rec"] == "" and rows[0]["flagged"] == "0"
    assert all(row["p_rec"] for row in rows[1:]) and any(row["flagged"] == "1" for row in rows[1:])
    printed = capsys.readouterr().out
    assert f"1 image(s) with a non-finite rec score (NaN or infinite): no p-value, never flagged: {rows[0]['file']}" \
        in printed
    if flag[0] == "--fdr":  # BH runs over the 63 images with a p-value
        flagged = [row["flagged"] == "1" for row in rows[1:]]
        assert flagged == benjamini_hochberg([float(row["p_rec"]) for row in rows[1:]], 0.9)
        assert f"flagged {sum(flagged)} of 63 image(s) with a p-value (of 64) by Benjamini-Hochberg" in printed


def benjamini_hochberg(p, level) -> list:
    """The textbook step-up rule over the p-values that are not NaN: flag the k smallest, k the largest with
    p_(k) <= k level / m."""
    assessed = sorted(value for value in p if not np.isnan(value))
    passing = [k for k in range(1, len(assessed) + 1) if assessed[k - 1] <= k * level / len(assessed)]
    cut = assessed[passing[-1] - 1] if passing else -1.0
    return [bool(value <= cut) for value in p]


def test_benjamini_hochberg_against_a_hand_computation():
    # m = 5 p-values (the NaN is no image's), level 0.1: thresholds 0.02 0.04 0.06 0.08 0.10. Sorted: 0.001 passes,
    # 0.05 fails its 0.04, 0.055 passes its 0.06, 0.09 and 0.9 fail: step-up flags the three smallest, 0.05
    # included, not 0.09 (p <= level would); counting the NaN (m = 6) it would flag 0.001 alone.
    p = np.array([0.055, 0.9, np.nan, 0.001, 0.05, 0.09])
    assert references.discoveries(p, 0.1).tolist() == [True, False, False, True, True, False]
    assert references.discoveries(p, 0.01).tolist() == [False, False, False, True, False, False]
    # the smallest conformal p-value, 1 / (n + 1), passes just when n >= m / level - 1: n = 199 allows m = 20 at 0.1
    assert references.discoveries(np.array([1 / 200] + [1.0] * 19), 0.1)[0]
    assert not references.discoveries(np.array([1 / 200] + [1.0] * 20), 0.1).any()
    generator = np.random.default_rng(0)
    for _ in range(200):
        p = generator.integers(1, 41, size=generator.integers(1, 30)) / 40  # ties, as conformal p-values have
        level = generator.choice([0.05, 0.1, 0.2])
        assert references.discoveries(p, level).tolist() == benjamini_hochberg(p, level)


def test_benjamini_hochberg_over_conformal_p_values_keeps_the_false_discovery_rate():
    """A calibration set and a batch of exchangeable normal scores mixed with shifted anomalous ones, many seeded
    draws, the project's p-values: BH's mean false-discovery proportion stays at or below its bound q m0 / m (0.08
    here, below q = 0.1) while it finds anomalies; flagging every p <= q, the mistake BH corrects, does not."""
    generator = np.random.default_rng(1)
    draws, n, normal, anomalous, shift, q = 300, 199, 80, 20, 3.0, 0.1
    labels = np.r_[np.zeros(normal), np.ones(anomalous)]
    proportions, naive, power = [], [], []
    for _ in range(draws):
        calibration = torch.from_numpy(generator.standard_normal(n))
        batch = np.r_[generator.standard_normal(normal), generator.standard_normal(anomalous) + shift]
        p = references.p_values({"s": batch}, {"calibration": {"s": calibration}})["s"]
        for flagged, into in ((references.discoveries(p, q), proportions), (p <= q, naive)):
            into.append(flagged[labels == 0].sum() / max(flagged.sum(), 1))
        power.append(references.discoveries(p, q)[labels == 1].mean())
    margin = 3 * np.std(proportions) / np.sqrt(draws)  # three standard errors of the mean over draws
    assert np.mean(proportions) <= q * normal / (normal + anomalous) + margin, (np.mean(proportions), margin)
    assert np.mean(naive) > q + 10 * margin, np.mean(naive)  # about 0.28
    assert np.mean(power) > 0.3, np.mean(power)  # it flags, not only refrains


def test_eval_counts_benjamini_hochbergs_false_discoveries_and_power():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.01, 0.5, 0.02, 0.9, 0.01, 0.01, 0.03, 0.6])
    # level 0.1, m = 8: thresholds k / 80; sorted 0.01 0.01 0.01 0.02 0.03 ... pass up to k = 5 (0.03 <= 0.0625)
    metrics = evaluate.decision_metrics(labels, p, 99, in_sample=False)
    assert metrics == {"fpr05": 0.5, "tpr05": 0.75, "fdp10": 2 / 5, "power10": 3 / 4, "p_min": 0.01}
    nothing = evaluate.decision_metrics(labels, np.full(8, 0.5), 9, in_sample=True)
    assert nothing == {"fpr05_in_sample": 0.0, "tpr05_in_sample": 0.0, "fdp10_in_sample": 0.0,
                       "power10_in_sample": 0.0, "p_min": 0.1}


def test_predict_flags_by_benjamini_hochberg_over_its_own_p_values(held_out_run, tiny_root, tmp_path, capsys):
    cfg, run = held_out_run
    images = tiny_root / "tiny" / "images"
    # 12 images calibrate rec, so no p-value is below 1 / 13: over 64 images BH flags at 0.9, not at 0.1
    predict.main(["--run", str(run), str(images), "--out", str(tmp_path / "out"), "--fdr", "0.9"])
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    p = [float(row["p_rec"]) for row in rows]
    flagged = [row["flagged"] == "1" for row in rows]
    assert flagged == benjamini_hochberg(p, 0.9) and 0 < sum(flagged) < len(rows)
    printed = capsys.readouterr().out
    assert f"flagged {sum(flagged)} of 64 image(s) by Benjamini-Hochberg at a false-discovery rate of 0.9 on rec: " \
           f"those with p <= {max(v for v, f in zip(p, flagged) if f):.4g}" in printed
    assert "in expectation, at most a share 0.9 of the flagged images are normal, given that the reference's 12 " \
           "normal images are exchangeable with the new normal ones" in printed
    assert f"wrote {sum(flagged)} overlay(s) of the rec map for the flagged images" in printed

    predict.main(["--run", str(run), str(images), "--out", str(tmp_path / "none"), "--fdr", "0.1"])
    assert all(row["flagged"] == "0" for row in csv.DictReader(open(tmp_path / "none" / "predictions.csv")))
    printed = capsys.readouterr().out
    assert "flagged none of 64 image(s) by Benjamini-Hochberg at a false-discovery rate of 0.1 on rec" in printed
    assert "it needs at least 639 calibration images (n >= m / Q - 1); rec has 12 (raise Data.holdout)" in printed
