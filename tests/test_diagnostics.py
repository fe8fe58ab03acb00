"""RAR in a real run: the repulsion option reaches the loss, the feature and BatchNorm diagnostics land in the logs
and results.json, and precise BatchNorm statistics keep resume and the fast path exact."""
import json

import numpy as np
import pytest
import torch

import eval as evaluate
import train
from datasets.medad import load_images, read_split
from models import to_model_input
from tests.conftest import write_config
from utils import seeding
from utils.grid.summary import summarize
from utils.method import batchnorm, feature_shape
from utils.method.batchnorm import eval_and_train_errors, recompute_bn_stats
from utils.method.feature_shape import spectrum
from utils.method.rar import features_of, linear_cka, pairwise_cka
from utils.method.reference import IMAGE_SCORES
from utils.run import checkpoint, config


def records(run_dir, tag):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["tag"] == tag]


def state_of(run_dir, index):
    return checkpoint.load(checkpoint.learner_path(run_dir, index))


def test_diagnostics_in_the_logs_the_checkpoints_and_results(tiny_root, tmp_path):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", Model={"num_learners": 3},
                            Solver={"num_epoch": 2})
    train.main(["--config", str(cfg_path)])
    evaluate.main(["--config", str(cfg_path)])
    run = tmp_path / "run"
    cfg = config.load(cfg_path)
    learners = checkpoint.load_learners(run, cfg, torch.device("cpu"))
    split = read_split(tiny_root / "tiny")
    train_images = to_model_input(load_images(split.directory, split.train, 32))
    probe = feature_shape.probe_of(train_images, cfg.Solver.seed)

    for index, learner in enumerate(learners):
        logged = records(run, f"learner{index}")
        assert len(logged) == 2  # one per epoch
        rank, share = spectrum(learner(probe)["features"])  # the last epoch's, on the probe in eval mode
        assert logged[-1]["effective_rank"] == pytest.approx(rank.item(), rel=1e-4)
        assert logged[-1]["top_share"] == pytest.approx(share.item(), rel=1e-4)
        assert 1 <= logged[-1]["effective_rank"] <= cfg.Model.ls and 0 < logged[-1]["top_share"] <= 1
        report = state_of(run, index)["report"]
        assert (report["eval_mse"], report["train_mse"]) == pytest.approx(
            eval_and_train_errors(learner, probe, cfg.Solver.bs), rel=1e-5)

    results = json.loads((run / "results.json").read_text())
    reported = results["diagnostics"]
    test_images = to_model_input(load_images(split.directory, split.test, 32))
    test_features = [features_of(learner, test_images) for learner in learners]
    expected = pairwise_cka(test_features).numpy()
    assert np.allclose(reported["linear_cka"], expected, atol=1e-5)
    assert np.allclose(np.diag(expected), 1, atol=1e-5) and expected.shape == (3, 3)
    assert reported["effective_rank"] == pytest.approx([spectrum(f)[0].item() for f in test_features], rel=1e-4)
    assert [report["eval_mse"] for report in reported["learners"]] == \
        [state_of(run, index)["report"]["eval_mse"] for index in range(3)]
    assert (run / "learner_cka.png").is_file()
    assert {row["score"] for row in summarize([results])} == set(IMAGE_SCORES)  # diagnostics is no score


def test_a_learner_whose_eval_mode_is_much_worse_is_named(tiny_root, tmp_path, monkeypatch, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", Solver={"num_epoch": 1})
    monkeypatch.setattr(batchnorm, "eval_and_train_errors",
                        lambda learner, images, batch_size: (0.071, 0.040))  # a broken learner seen on real images
    train.main(["--config", str(cfg_path)])
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning:" in line]
    assert len(warnings) == 2 and "learner 0:" in warnings[0] and "learner 1:" in warnings[1]
    assert "1.77x" in warnings[0] and "Solver.precise_bn=true" in warnings[0]
    evaluate.main(["--config", str(cfg_path)])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["diagnostics"]["warnings"] == [warning.split("warning: ", 1)[1] for warning in warnings]


def test_the_repulsion_trained_with_is_linear_cka_with_the_seniors(tiny_root, tmp_path):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run",
                            Solver={"num_epoch": 1, "Lambda": 0.5, "bs": 32})
    train.main(["--config", str(cfg_path)])
    records_of_junior = records(tmp_path / "run", "learner1")
    senior, junior = checkpoint.load_learners(tmp_path / "run", config.load(cfg_path), torch.device("cpu"))
    split = read_split(tiny_root / "tiny")
    x = to_model_input(load_images(split.directory, split.train[:32], 32))
    junior.train().requires_grad_(True)
    expected = linear_cka(junior(x)["features"], senior(x)["features"])
    terms = train.train_step(junior, torch.optim.SGD(junior.parameters(), lr=0.0), x, [senior(x)["features"]], 0.5)
    assert terms["repulsion"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx((junior.loss(junior(x), x)[0] + 0.5 * expected).item(), rel=1e-5)
    assert 0 <= records_of_junior[0]["repulsion"] <= 1.01


def test_precise_bn_statistics_are_in_the_checkpoint_and_resume_exactly(tiny_root, tmp_path, monkeypatch):
    settings = {"Solver": {"num_epoch": 3, "precise_bn": True}}
    straight = write_config(tmp_path / "a.yaml", tiny_root, tmp_path / "straight", **settings)
    train.main(["--config", str(straight)])
    # The final checkpoint's statistics are the exact average over the training set, not the last batches'.
    cfg = config.load(straight)
    split = read_split(tiny_root / "tiny")
    images = to_model_input(load_images(split.directory, split.train, 32))
    learner = checkpoint.load_learners(tmp_path / "straight", cfg, torch.device("cpu"))[1]
    before = {name: value.clone() for name, value in learner.named_buffers()}
    recompute_bn_stats(learner, images, cfg.Solver.bs, seed=seeding.stream_seed(cfg.Solver.seed, 1, "precise_bn"))
    for name, value in learner.named_buffers():
        assert torch.allclose(value.float(), before[name].float(), rtol=1e-5, atol=1e-6), name
    report = state_of(tmp_path / "straight", 1)["report"]
    assert "eval_mse_before_precise_bn" in report

    # Killed after learner 1's last epoch, before its statistics were recomputed and saved: the rerun resumes
    # and ends exactly as the straight run did.
    killed = write_config(tmp_path / "b.yaml", tiny_root, tmp_path / "killed", **settings)
    finish = batchnorm.finish_learner

    def killed_at_learner_1(index, *args):
        if index == 1:
            raise KeyboardInterrupt
        return finish(index, *args)

    monkeypatch.setattr(batchnorm, "finish_learner", killed_at_learner_1)
    with pytest.raises(SystemExit):
        train.main(["--config", str(killed)])
    assert state_of(tmp_path / "killed", 1)["epoch"] == 2
    monkeypatch.setattr(batchnorm, "finish_learner", finish)
    train.main(["--config", str(killed)])
    for key, value in state_of(tmp_path / "straight", 1)["model"].items():
        assert torch.equal(state_of(tmp_path / "killed", 1)["model"][key], value), key


def test_precise_bn_fast_and_eager_paths_agree(tiny_root, tmp_path):
    runs = {}
    for fast in (True, False):
        cfg = write_config(tmp_path / f"{fast}.yaml", tiny_root, tmp_path / f"run{fast}", Exp={"cache_seniors": fast},
                           Solver={"precise_bn": True})
        train.main(["--config", str(cfg)])
        runs[fast] = state_of(tmp_path / f"run{fast}", 1)["model"]
    for key, value in runs[True].items():
        assert torch.allclose(runs[False][key].float(), value.float(), rtol=1e-4, atol=1e-6), key


def test_a_step_that_could_not_be_captured_is_a_warning_in_the_log_the_results_and_the_grid_line(
        tiny_root, tmp_path, monkeypatch, capsys):
    """capture_step's fallback reason goes where the eval/train BatchNorm warning goes."""
    import sweep
    from utils.run import cuda_graph

    def falls_back(step, *args, **kwargs):  # as capture_step falls back: one warning line, logged when it happens
        warning = "CUDA graph capture not used (RuntimeError: emulated); training eagerly, which is slower"
        kwargs["log"](f"warning: {warning}")
        return step, warning

    monkeypatch.setattr(train, "captures", lambda cfg, device: True)  # as on CUDA
    monkeypatch.setattr(cuda_graph, "capture_step", falls_back)
    grid_file = tmp_path / "g.yaml"
    config_file = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "x", Solver={"num_epoch": 1})
    grid_file.write_text(f"name: g\nout_dir: {tmp_path}\nconfigs: [{config_file}]\nseeds: [3]\n")
    assert sweep.main(["--grid", str(grid_file), "--cell", "0"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    expected = "warning: CUDA graph capture not used (RuntimeError: emulated); training eagerly, which is slower"
    assert line.endswith(f"; {expected}; {expected}")  # one per learner
    run = next(path for path in (tmp_path / "g").iterdir() if path.is_dir())
    assert (run / "train.log").read_text().count(expected) == 2
    results = json.loads((run / "results.json").read_text())
    assert results["diagnostics"]["warnings"] == [expected.removeprefix("warning: ")] * 2


@pytest.mark.parametrize("n_train, every", [(400, 11), (1000, 5), (3851, 2), (6000, 1), (48, 89)])
def test_the_probe_costs_a_small_share_of_training(n_train, every):
    assert feature_shape.probe_every(n_train) == every
    assert feature_shape.PROBE_SIZE / (3 * n_train * every) <= feature_shape.PROBE_SHARE  # probe / training work


def test_the_probe_is_looked_at_on_the_first_the_last_and_every_kth_epoch(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setattr(feature_shape, "probe_every", lambda n_train: 3)
    cfg_path = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run", Solver={"num_epoch": 7})
    train.main(["--config", str(cfg_path)])
    for index in (0, 1):
        logged = records(tmp_path / "run", f"learner{index}")
        assert [record["step"] for record in logged] == list(range(1, 8))
        assert [record["step"] for record in logged if "effective_rank" in record] == [1, 3, 6, 7]
