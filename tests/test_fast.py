"""The training step, Adam and resuming its state, and the benchmark (the captured CUDA-graph step:
test_cuda_graph.py)."""
import copy
import json

import pytest
import torch

import models
import train
from models import to_model_input
from tests.conftest import REPO, load_script, write_config
from utils.method import batchnorm, feature_shape
from utils.method.dsu import image_scores, score_dataset, score_maps
from utils.method.rar import features_of, linear_cka
from utils.run import config
from utils.run.optimizer import adam as project_adam, adam_options, load_optimizer_state

SIZE, BS, LAMBDA = 32, 8, 1.0


def backbone(network="AE", seed=0):
    torch.manual_seed(seed)
    return models.build({"network": network, "img_size": SIZE, "mp": 1, "ls": 16, "layer": 4})


def adam(learner):
    return torch.optim.Adam(learner.parameters(), lr=1e-3, betas=(0.5, 0.999))


@pytest.fixture(scope="module")
def data():
    """Training images in [-1, 1] and one frozen senior's cached features."""
    images = torch.rand(4 * BS, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    senior = backbone(seed=1).eval().requires_grad_(False)
    return images, [features_of(senior, images)]


def batches(n=3):
    generator = torch.Generator().manual_seed(5)
    return [torch.randperm(4 * BS, generator=generator)[:BS] for _ in range(n)]


def step_for(learner, optimizer, data):
    images, cache = data

    def step(batch):
        return train.train_step(learner, optimizer, images[batch], [c[batch] for c in cache], LAMBDA)

    return step


def assert_same(a, b, rtol=1e-6):
    (losses_a, weights_a), (losses_b, weights_b) = a, b
    assert len(losses_a) == len(losses_b)
    for step_a, step_b in zip(losses_a, losses_b):
        assert step_a.keys() == step_b.keys()
        for name in step_a:
            assert step_a[name] == pytest.approx(step_b[name], rel=rtol, abs=1e-9), name
    for key in weights_a:
        assert torch.allclose(weights_a[key].double(), weights_b[key].double(), rtol=rtol, atol=1e-7), key


@pytest.mark.parametrize("network", ["AE", "AE-U", "MemAE"])
def test_eager_step_equals_hand_written_step(data, network):
    images, cache = data
    learner = backbone(network).train()
    reference = copy.deepcopy(learner)
    step = step_for(learner, adam(learner), data)
    reference_optimizer = adam(reference)
    for batch in batches():
        x = images[batch]
        out = reference(x)
        loss = reference.loss(out, x)[0] + LAMBDA * linear_cka(out["features"], cache[0][batch])
        reference_optimizer.zero_grad()
        loss.backward()
        reference_optimizer.step()
        terms = step(batch)
        assert terms["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
        assert terms["cka_senior0"].item() == pytest.approx(terms["repulsion"].item())
        assert not terms["loss"].requires_grad
    for key, value in reference.state_dict().items():
        assert torch.allclose(learner.state_dict()[key].double(), value.double(), atol=1e-7), key


def test_optimizer_state_resumes_without_capturable(data):
    """A checkpoint written by a capturable (CUDA) or fused optimizer resumes in a plain one, and continues the same."""
    learner = backbone().train()
    optimizer = adam(learner)
    step = step_for(learner, optimizer, data)
    first, second, third = batches()
    step(first)
    saved = copy.deepcopy(optimizer.state_dict())
    weights = copy.deepcopy(learner.state_dict())
    for group in saved["param_groups"]:
        group["capturable"] = True  # as written on a GPU
        group["fused"] = True  # as written by a fused optimizer
    expected = [step(batch)["loss"].item() for batch in (second, third)]

    resumed = backbone(seed=9).train()
    resumed.load_state_dict(weights)
    resumed_optimizer = adam(resumed)
    load_optimizer_state(resumed_optimizer, saved)
    assert not any(group["capturable"] or group["fused"] for group in resumed_optimizer.param_groups)
    resumed_step = step_for(resumed, resumed_optimizer, data)
    assert [resumed_step(batch)["loss"].item() for batch in (second, third)] == pytest.approx(expected, rel=1e-6)


def test_resume_of_a_gpu_layout_state_on_the_cpu_equals_an_uninterrupted_run(data):
    """A checkpoint written on a GPU holds weights and Adam moments in the standard layout; on the CPU the weights
    are channels-last and Adam is fused. Resumed there, training must continue exactly as if never stopped."""
    solver, cpu = config.Solver(lr=1e-3), torch.device("cpu")
    learner = models.place(backbone(), cpu).train()
    optimizer = project_adam(learner, solver, cpu)
    step = step_for(learner, optimizer, data)
    first, *rest = batches(4)
    step(first)
    as_on_gpu = {key: value.clone(memory_format=torch.contiguous_format) for key, value in learner.state_dict().items()}
    state = copy.deepcopy(optimizer.state_dict())
    for param_state in state["state"].values():
        for key, value in param_state.items():
            param_state[key] = value.contiguous()
    assert any(not value.is_contiguous() for value in learner.state_dict().values())  # channels-last here
    uninterrupted = [step(batch)["loss"].item() for batch in rest]

    resumed = models.place(backbone(seed=9), cpu).train()
    resumed.load_state_dict(as_on_gpu)
    resumed_optimizer = project_adam(resumed, solver, cpu)
    load_optimizer_state(resumed_optimizer, state)
    resumed_step = step_for(resumed, resumed_optimizer, data)
    assert [resumed_step(batch)["loss"].item() for batch in rest] == uninterrupted  # bit for bit
    for key, value in learner.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_adam_is_fused_on_cpu_and_cuda_and_capturable_when_captured():
    """Without an explicit choice on CUDA, fused=False would select Adam's slowest path, a loop over parameters."""
    assert adam_options(torch.device("cpu")) == {"fused": True, "capturable": False}
    assert adam_options(torch.device("cuda:1"), capture=True) == {"fused": True, "capturable": True}
    assert adam_options(torch.device("cuda"), capture=False) == {"fused": True, "capturable": False}
    optimizer = project_adam(backbone(), config.Solver(lr=2e-3, weight_decay=1e-5), torch.device("cpu"))
    group = optimizer.param_groups[0]
    assert (group["fused"], group["capturable"], group["lr"], group["betas"], group["weight_decay"]) == \
        (True, False, 2e-3, (0.5, 0.999), 1e-5)


def test_fast_and_eager_training_log_the_same_losses(tiny_root, tmp_path):
    """Per-epoch losses in metrics.jsonl (test_pipeline compares the weights)."""
    logged = {}
    for fast_path in (True, False):
        cfg = write_config(tmp_path / f"{fast_path}.yaml", tiny_root, tmp_path / f"run{fast_path}",
                           Exp={"cache_seniors": fast_path}, Solver={"num_epoch": 3})
        train.main(["--config", str(cfg)])
        records = [json.loads(line) for line in (tmp_path / f"run{fast_path}" / "metrics.jsonl").open()]
        logged[fast_path] = {(r["tag"], r["step"]): r for r in records}
    assert logged[True].keys() == logged[False].keys() and len(logged[True]) == 6
    assert "repulsion" in logged[True]["learner1", 3]
    for key, record in logged[True].items():
        assert record.keys() == logged[False][key].keys()
        for name in record.keys() - {"tag", "step", "epoch_s"}:
            assert record[name] == pytest.approx(logged[False][key][name], rel=1e-5), (key, name)


def test_bench_naive_step_equals_fast_step():
    bench = load_script("dev/bench")
    train_u8, _, _ = bench.make_data(2 * BS, 4, SIZE)
    naive_x = torch.stack([bench.NaiveImages(train_u8)[i] for i in range(len(train_u8))])
    images = to_model_input(torch.from_numpy(train_u8).unsqueeze(1))
    assert torch.allclose(naive_x, images, atol=1e-6)  # PIL -> ToTensor -> Normalize = the fast input

    senior = backbone(seed=1).eval().requires_grad_(False)
    # Cached in the batches the naive path forwards (a convolution's rounding may depend on the batch size, and
    # Adam's first steps turn tiny differences of near-zero gradients into differences of the order of lr).
    data = (images, [features_of(senior, images, batch_size=BS)])
    naive, learner = backbone(), backbone()
    naive_optimizer = adam(naive)
    step = step_for(learner, adam(learner), data)
    for batch in (torch.arange(BS), torch.arange(BS, 2 * BS), torch.arange(BS)):
        naive_terms = bench.naive_train_step(naive, naive_optimizer, [senior], naive_x[batch], LAMBDA)
        terms = step(batch)
        for name in terms:
            assert naive_terms[name].item() == pytest.approx(terms[name].item(), rel=1e-5), name
    for key, value in learner.state_dict().items():
        assert torch.allclose(naive.state_dict()[key].double(), value.double(), rtol=1e-5, atol=1e-6), key


@pytest.mark.parametrize("network", ["AE", "AE-U"])
def test_bench_naive_scores_equal_batched_scores(network):
    bench = load_script("dev/bench")
    _, test_u8, _ = bench.make_data(1, 12, SIZE)
    learners = [backbone(network, seed).eval().requires_grad_(False) for seed in range(3)]
    naive = bench.naive_scores(learners, test_u8, torch.device("cpu"))
    exact = image_scores(score_maps(learners, to_model_input(torch.from_numpy(test_u8).unsqueeze(1))))
    stored = image_scores(score_dataset(learners, torch.from_numpy(test_u8).unsqueeze(1), 5,
                                        torch.device("cpu")).maps)
    for name in ("rec", "unc", "dsu"):
        assert naive[name] == pytest.approx(exact[name].double().numpy(), rel=1e-4), name
        assert naive[name] == pytest.approx(stored[name].double().numpy(), rel=1e-4), name


def test_epoch_overhead_script_times_the_real_loop(monkeypatch):
    overhead = load_script("dev/epoch_overhead")
    monkeypatch.setitem(overhead.TRAIN_SIZES, "demo", 96)
    originals = train.EpochTotals, feature_shape.on_probe, batchnorm.finish_learner
    lines = overhead.measure(REPO / "cfgs" / "Demo_AE.yaml", torch.device("cpu"), epochs=3)
    assert [line["learner"] for line in lines] == [0, 1]
    for line in lines:
        assert line["n_train"] == 96 and line["epochs"] == 3 and line["probe_every"] == feature_shape.probe_every(96)
        assert 0 < line["steps_s"] < line["loop_s"] and line["probe_s"] > 0
        assert line["outside_share"] == pytest.approx(1 - line["steps_s"] / line["loop_s"], abs=2e-3)
        assert 0 < line["full_run_outside_share"] < 1 and line["full_run_epochs"] == 14
    assert lines[-1]["checkpoint_s"] > 0
    assert (train.EpochTotals, feature_shape.on_probe, batchnorm.finish_learner) == originals  # undone
