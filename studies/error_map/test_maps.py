"""studies/error_map/maps.py and analysis.py: the maps against references, the rule on made-up records."""
import numpy as np
import pytest
import torch

from studies.error_map import analysis as study
from studies.error_map.maps import MAPS, base_maps, combined, ssim_map


def test_ssim_map_equals_scikit_image_away_from_the_border():
    metrics = pytest.importorskip("skimage.metrics")
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 40, 40, generator=generator) * 2 - 1
    y = (x + 0.3 * torch.randn(1, 1, 40, 40, generator=generator)).clamp(-1, 1)
    _, full = metrics.structural_similarity(x[0, 0].numpy().astype(np.float64), y[0, 0].numpy().astype(np.float64),
                                            data_range=2.0, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False, full=True)
    ours = ssim_map(x, y)[0, 0].numpy()
    inner = slice(5, -5)  # the border differs only in how the window is padded
    assert np.allclose(ours[inner, inner], full[inner, inner], atol=1e-10)
    assert ours.shape == (40, 40)


def test_ssim_of_an_image_with_itself_is_one_and_drops_where_it_differs():
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.allclose(ssim_map(x, x), torch.ones_like(x, dtype=torch.float64))
    y = x.clone()
    y[:, :, 10:14, 10:14] = -x[:, :, 10:14, 10:14]
    dissimilarity = 1 - ssim_map(x, y)
    assert dissimilarity[:, :, 12, 12].min() > 10 * dissimilarity[:, :, 28, 28].max()


def test_l2_is_the_rec_map_and_the_sum_is_scaled_by_the_reference_means():
    from utils.method.dsu import maps_of
    x, x_hat = torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16)
    variance = torch.ones_like(x)
    maps = base_maps(x, x_hat, variance)
    rec = maps_of(x, {"x_hat": [x_hat, x_hat], "variance": [variance, variance], "input_term": [x, x]})["rec"]
    assert torch.equal(maps["l2"], rec)
    assert torch.equal(maps["l1"], (x - x_hat).abs())
    both = combined(maps, {"l2": 2.0, "ssim": 4.0})
    assert set(both) == set(MAPS)
    assert torch.allclose(both["l2_ssim"], maps["l2"] / 2 + maps["ssim"] / 4)


def record(dataset, seed, ls, pixel_gain, auc_change):
    """An archived run whose ssim map gains `pixel_gain` pixel AUROC over l2 and changes image AUC by auc_change."""
    maps = {}
    for name in MAPS:
        gain = {"ssim": pixel_gain, "l1": -0.01}.get(name, 0.0)
        change = auc_change if name == "ssim" else 0.0
        maps[name] = {"auc": 0.8 + change, "ap": 0.8, "z_top1_auc": 0.8}
        if "local" in dataset:
            maps[name]["pixel_auroc"] = 0.85 + gain
    return {"run": {"dataset": dataset, "seed": seed, "ls": ls}, "maps": maps, "eval_rec_auc": 0.8,
            "fit_images": 300, "test_images": 1000}


def records(pixel_gain, auc_change, seeds=(1, 2, 3)):
    noise = {1: 0.0, 2: 0.004, 3: -0.004}
    return [record(dataset, seed, ls, pixel_gain + noise[seed] * (c % 2), auc_change)
            for seed in seeds for c, dataset in enumerate(["FMNIST_c4", "FMNIST_local_c4", "FMNIST_c6",
                                                           "FMNIST_local_c6", "FMNIST_c9", "FMNIST_local_c9"])
            for ls in (4, 16)]


def test_the_map_chosen_on_seed_1_passes_only_with_gain_and_no_image_auc_loss():
    good = study.study_markdown(records(0.02, 0.0))
    assert "Chosen: **ssim**" in good and "**ssim passes** the rule" in good
    costly = study.study_markdown(records(0.02, -0.03))
    assert "**ssim does not pass** the rule" in costly
    flat = study.study_markdown(records(0.0, 0.0))
    assert "does not pass" in flat
    early = study.study_markdown(records(0.02, 0.0, seeds=(1,)))
    assert "Seeds 2-3 have not run yet: no decision." in early
    partial = study.study_markdown([r for r in records(0.02, 0.0) if (r["run"]["seed"], r["run"]["ls"]) != (3, 4)])
    assert "Seeds 2-3 hold 18 of their 24 runs" in partial and "passes" not in partial


def test_the_differences_are_averaged_within_units_then_over_units():
    found = study.difference(records(0.02, 0.0), "ssim", "pixel_auroc", "local", (2, 3))
    # units: 3 classes x 2 seeds; the local sets (odd positions) carry +0.004 on seed 2 and -0.004 on seed 3
    assert found["n"] == 6 and found["mean"] == pytest.approx(0.02)
    assert found["low"] < 0.02 < found["high"]


def test_the_report_is_rebuilt_from_its_records_alone(tmp_path):
    import json
    folder = tmp_path / "records"
    folder.mkdir()
    for index, item in enumerate(records(0.02, 0.0)):
        (folder / f"{index}.json").write_text(json.dumps(item))
    study.main(["--study", str(tmp_path)])
    first = (tmp_path / "study.md").read_text()
    study.main(["--study", str(tmp_path)])
    assert (tmp_path / "study.md").read_text() == first and "## c. Pixel AUROC gain by latent size" in first
