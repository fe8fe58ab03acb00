"""The training step (eager, and the CUDA-graph capture and its check with an emulated graph), Adam and resuming
its state, and the benchmark."""
import contextlib
import copy
import json
import shutil

import numpy as np
import pytest
import torch

import models
import train
from models import to_model_input
from tests.conftest import REPO, load_script, run_cli, write_config
from utils.method import batchnorm, feature_shape
from utils.method.dsu import image_scores, score_dataset, score_maps
from utils.method.rar import features_of, linear_cka
from utils.run import checkpoint, config, cuda_graph
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


def step_for(learner, optimizer, data, capture=False, log=print):
    images, cache = data

    def step(batch):
        return train.train_step(learner, optimizer, images[batch], [c[batch] for c in cache], LAMBDA)

    return cuda_graph.capture_step(step, learner, optimizer, BS, log=log)[0] if capture else step


def trajectory(data, capture=False, log=print, network="AE", learner=None):
    """Losses of 3 steps from a fixed initial state (the learner's, default a new one), and the final weights."""
    learner = backbone(network).train() if learner is None else learner
    optimizer = adam(learner)
    step = step_for(learner, optimizer, data, capture, log)
    losses = [{name: value.item() for name, value in step(batch).items()} for batch in batches()]
    return losses, learner.state_dict()


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


def test_restore_undoes_steps_and_a_zero_adam_state_equals_a_fresh_one(data):
    """What the capture relies on: warm-up steps are undone in place, also from an empty optimizer state."""
    untouched = trajectory(data)
    learner = backbone().train()
    optimizer = adam(learner)
    step = step_for(learner, optimizer, data)
    tensors = [value.data_ptr() for value in learner.state_dict().values()]
    saved = cuda_graph.snapshot(learner, optimizer)  # empty Adam state
    for batch in batches():
        step(batch)
    cuda_graph.restore(learner, optimizer, saved)
    assert [value.data_ptr() for value in learner.state_dict().values()] == tensors  # in place
    assert all(float(state["step"]) == 0 for state in optimizer.state.values())
    assert_same(([{name: value.item() for name, value in step(batch).items()} for batch in batches()],
                 learner.state_dict()), untouched)

    # From a non-empty state (as on resume): steps after restore repeat the steps after the snapshot.
    saved = cuda_graph.snapshot(learner, optimizer)
    first = [step(batch)["loss"].item() for batch in batches()]
    cuda_graph.restore(learner, optimizer, saved)
    assert [step(batch)["loss"].item() for batch in batches()] == first


# How a replay can go wrong: each wrong gradient below leaves the loss, and Adam's first update (about lr x the sign
# of the gradient), almost as they are, so only the gradient check sees it.
WRONG_GRADIENTS = {"scaled": lambda gradient: 2 * gradient,
                   "resized": lambda gradient: gradient.sign() * gradient.abs().mean()}  # right signs, wrong sizes


def emulated_capture(mode, learner=None):
    """A stand-in for cuda_graph.capture on the CPU: 'replay' runs the eager step on the static index (for a mode of
    WRONG_GRADIENTS, with the learner's gradients made wrong on the way)."""
    def capture(eager, index, device):
        if mode == "fails":
            raise RuntimeError("operation not permitted when stream is capturing")
        outputs = eager(index)  # like a capture, this leaves the state changed; captured_step restores it
        if mode == "stale":
            return (lambda: None), outputs  # a graph that updates nothing

        def replay():
            hooks = ([param.register_hook(WRONG_GRADIENTS[mode]) for param in learner.parameters()]
                     if mode in WRONG_GRADIENTS else [])
            for name, value in eager(index).items():
                outputs[name].copy_(value)
            for hook in hooks:
                hook.remove()
            if mode == "double":  # right loss, wrong weights
                eager(index)

        return replay, outputs
    return capture


@pytest.mark.parametrize("mode", ["emulated", "stale", "double", "fails", "scaled", "resized"])
def test_capture_logic_keeps_the_eager_trajectory(data, monkeypatch, mode):
    """Warm-up, self-check and fallback never change the maths: the run equals a plain eager run, and a replay whose
    loss, gradients or update differ from the eager step's is refused."""
    eager = trajectory(data)
    learner = backbone().train()
    monkeypatch.setattr(cuda_graph, "side_stream", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(cuda_graph, "capture", emulated_capture(mode, learner))
    lines = []
    captured = trajectory(data, capture=True, log=lines.append, learner=learner)
    assert len(lines) == 1
    if mode == "emulated":
        assert "captured as a CUDA graph" in lines[0]
    else:
        assert "not used" in lines[0] and "training eagerly" in lines[0]
    if mode in WRONG_GRADIENTS:
        assert "gradient of" in lines[0], lines[0]
    assert_same(captured, eager)


def test_a_bug_in_the_step_surfaces_as_itself_once(data, monkeypatch):
    """Only what capture raises falls back; an error of the step itself is raised, not reported as a capture
    problem first."""
    monkeypatch.setattr(cuda_graph, "side_stream", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(cuda_graph, "capture", emulated_capture("emulated"))
    learner = backbone().train()

    def broken(batch):
        raise ValueError("shapes do not match")

    lines = []
    with pytest.raises(ValueError, match="shapes do not match"):
        cuda_graph.capture_step(broken, learner, adam(learner), BS, log=lines.append)
    assert lines == []


def test_the_check_refuses_wrongly_scaled_gradients_and_accepts_float_noise(data):
    """mismatch on records of two steps from one state: the eager step's against itself with its gradients scaled by
    2, with the right signs but wrong sizes, and with float32 rounding noise."""
    learner = backbone().train()
    optimizer = adam(learner)
    step = step_for(learner, optimizer, data)
    initial = cuda_graph.snapshot(learner, optimizer)
    reference = cuda_graph.record(step(batches()[0]), learner)
    for name, wrong in WRONG_GRADIENTS.items():
        candidate = {**reference, "gradients": {key: wrong(value) for key, value in reference["gradients"].items()}}
        assert "gradient of" in cuda_graph.mismatch(reference, candidate, initial), name
    noisy = {**reference, "gradients": {key: value * (1 + 1e-6 * torch.randn_like(value))
                                        for key, value in reference["gradients"].items()}}
    assert cuda_graph.mismatch(reference, noisy, initial) is None
    assert cuda_graph.mismatch(reference, reference, initial) is None


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


def test_capture_runs_on_a_stream_of_the_learners_device(monkeypatch):
    """Exp.device=cuda:1: the graph must be captured on a cuda:1 stream with cuda:1 current, else the step's work
    runs outside the capture. Checked with stand-ins for torch.cuda's pieces (no GPU needed)."""
    seen = {}

    class Stream:
        def __init__(self, device=None):
            self.device = device

    @contextlib.contextmanager
    def on_device(device):
        seen["current"] = device
        yield
        seen["current"] = None

    @contextlib.contextmanager
    def graph(cuda_graph, stream=None, **kwargs):
        seen["stream_device"] = stream.device if stream is not None else None
        yield

    def eager(index):
        seen["step_device"], seen["step_stream"] = seen["current"], seen["stream_device"]
        return {"loss": torch.zeros(())}

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "device", on_device)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: type("Graph", (), {"replay": lambda self: None})())
    cuda_graph.capture(eager, torch.arange(4), torch.device("cuda:1"))
    assert seen["step_device"] == torch.device("cuda:1") and seen["step_stream"] == torch.device("cuda:1")


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


def test_bench_runs_end_to_end(tmp_path):
    profile = tmp_path / "profile.txt"
    result = run_cli("scripts/dev/bench.py", "--device", "cpu", "--n-train", "64", "--n-test", "16", "--img-size", "32",
                     "--epochs", "1", "--profile", profile, "--profile-epochs", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    required = ("device", "train_s_per_epoch", "score_images_per_s", "peak_mem_mb", "naive_train_s_per_epoch",
                "naive_score_images_per_s", "naive_score_images", "train_speedup", "score_speedup")
    assert all(key in report for key in required), [key for key in required if key not in report]
    assert report["device"].startswith("cpu") and report["n_train"] == 64 and report["n_test"] == 16
    assert len(report["train_s_per_epoch"]) == len(report["naive_train_s_per_epoch"]) == 3
    assert all(value > 0 for value in report["train_s_per_epoch"] + report["naive_train_s_per_epoch"])
    assert report["naive_score_images"] == 16 and report["peak_mem_mb"] > 0
    # The same training on both paths; train.py's CPU path uses fused Adam and channels-last weights (same maths,
    # other rounding), so a few steps differ in the fourth digit. Exact step equality: the test above.
    assert report["loss_max_rel_diff"] < 1e-3
    assert report["score_max_rel_diff"]["rec"] < 1e-3 and report["score_max_rel_diff"]["unc"] < 1e-3
    assert all(np.isfinite(report[key]) for key in ("train_speedup", "score_speedup"))
    # The profiled junior: 3 seniors, 2 epochs of 64 // 64 steps, and its table of operators by self time.
    text = profile.read_text()
    assert report["profile"] == str(profile) and report["profile_s_per_epoch"] > 0
    assert text.startswith("learner 3 (3 seniors), 2 epochs of 1 steps on cpu")
    assert "Self CPU" in text and "aten::convolution" in text


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("network", ["AE", "AE-U", "MemAE"])
def test_cuda_graph_step_equals_eager_step(data, network):
    """On a GPU: the step is really captured, and it trains as the eager step does (capturable Adam in both)."""
    device = torch.device("cuda")
    images, cache = data
    runs = {}
    for capture in (True, False):
        learner = backbone(network).to(device).train()
        optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3, betas=(0.5, 0.999), capturable=True)
        lines = []
        step = step_for(learner, optimizer, (images.to(device), [c.to(device) for c in cache]), capture,
                        lines.append)
        losses = [{name: value.item() for name, value in step(batch.to(device)).items()}
                  for batch in batches() * 3]
        runs[capture] = losses, {key: value.cpu() for key, value in learner.state_dict().items()}
        if capture:
            assert len(lines) == 1 and "captured as a CUDA graph" in lines[0], lines
    assert_same(runs[True], runs[False], rtol=1e-3)


@cuda
def test_cuda_training_fast_equals_eager_and_resumes(tiny_root, tmp_path):
    logged = {}
    for fast_path in (True, False):
        cfg = write_config(tmp_path / f"{fast_path}.yaml", tiny_root, tmp_path / f"run{fast_path}",
                           Exp={"cuda_graph": fast_path, "device": "cuda"}, Solver={"num_epoch": 3})
        train.main(["--config", str(cfg)])
        log = (tmp_path / f"run{fast_path}" / "train.log").read_text()
        assert ("captured as a CUDA graph" in log) == fast_path, log
        records = [json.loads(line) for line in (tmp_path / f"run{fast_path}" / "metrics.jsonl").open()]
        logged[fast_path] = {(r["tag"], r["step"]): r["loss"] for r in records}
    assert logged[True].keys() == logged[False].keys()
    for key, loss in logged[True].items():
        assert loss == pytest.approx(logged[False][key], rel=1e-3), key
    # Resume from a checkpoint written by the captured run (capturable Adam state on the GPU): on the GPU with and
    # without capture, and on the CPU; epoch 3 is trained again from the same state and gives the same loss.
    state = checkpoint.load(checkpoint.learner_path(tmp_path / "runTrue", 1))
    state["epoch"] = 2
    losses = []
    for device, fast_path in (("cuda", True), ("cuda", False), ("cpu", True)):
        out = tmp_path / f"resume-{device}-{fast_path}"
        out.mkdir()
        shutil.copy(checkpoint.learner_path(tmp_path / "runTrue", 0), checkpoint.learner_path(out, 0))
        checkpoint.save(state, checkpoint.learner_path(out, 1))
        cfg = write_config(tmp_path / "resume.yaml", tiny_root, out, Exp={"cuda_graph": fast_path, "device": device},
                           Solver={"num_epoch": 3})
        train.main(["--config", str(cfg)])
        assert "learner 1: resuming at epoch 2" in (out / "train.log").read_text()
        losses.append([json.loads(line) for line in (out / "metrics.jsonl").open()][-1]["loss"])
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-3)


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
