"""The captured training step (utils/run/cuda_graph.py): its check, with graphs emulated on the CPU that go wrong in
each way a replay can, and the real capture on CUDA."""
import contextlib
import json
import shutil

import numpy as np
import pytest
import torch

import train
from tests.conftest import load_script, write_config
from tests.test_fast import LAMBDA, adam, assert_same, backbone, batches, data  # noqa: F401 (data: a fixture)
from utils.run import checkpoint, cuda_graph

# Biases whose true gradient is zero: a BatchNorm (or linear CKA, which centres) follows them. Their gradient is
# rounding noise, and Adam turns it into steps of about lr either way.
BEFORE_BATCHNORM = ("to_latent.0.bias", "to_latent.3.bias", "from_latent.0.bias")
SMALL_BATCHNORM_WEIGHT = "from_latent.1.weight"  # about 1e-3 of the whole gradient here, 3e-4 in the demo


def step_of(learner, optimizer, data):
    images, cache = data

    def step(batch):
        return train.train_step(learner, optimizer, images[batch], [c[batch] for c in cache], LAMBDA)

    return step


def captured(learner, optimizer, data, log):
    """capture_step checked on the batches trajectory() then trains on, as train.py checks the first steps."""
    planned = [batch.to(data[0].device) for batch in batches()]  # on the GPU, as train.py passes them
    return cuda_graph.capture_step(step_of(learner, optimizer, data), learner, optimizer, planned,
                                   data[0][planned[0]], log=log)[0]


def trajectory(data, capture=False, log=print, learner=None):
    """Losses of 3 steps from a fixed initial state (the learner's, default a new one), and the final weights."""
    learner = backbone().train() if learner is None else learner
    optimizer = adam(learner)
    step = captured(learner, optimizer, data, log) if capture else step_of(learner, optimizer, data)
    losses = [{name: value.item() for name, value in step(batch).items()} for batch in batches()]
    return losses, learner.state_dict()


def assert_equal(a, b):
    """Bit for bit: the same losses and weights."""
    (losses_a, weights_a), (losses_b, weights_b) = a, b
    assert losses_a == losses_b
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key


def test_restore_undoes_steps_and_a_zero_adam_state_equals_a_fresh_one(data):
    """What the check relies on: steps are undone in place, also from an empty optimizer state."""
    untouched = trajectory(data)
    learner = backbone().train()
    optimizer = adam(learner)
    step = step_of(learner, optimizer, data)
    tensors = [value.data_ptr() for value in learner.state_dict().values()]
    saved = cuda_graph.snapshot(learner, optimizer)  # empty Adam state
    for batch in batches():
        step(batch)
    cuda_graph.restore(learner, optimizer, saved)
    assert [value.data_ptr() for value in learner.state_dict().values()] == tensors  # in place
    assert all(float(state["step"]) == 0 for state in optimizer.state.values())
    assert_equal(([{name: value.item() for name, value in step(batch).items()} for batch in batches()],
                  learner.state_dict()), untouched)

    # From a non-empty state (as on resume): steps after restore repeat the steps after the snapshot.
    saved = cuda_graph.snapshot(learner, optimizer)
    first = [step(batch)["loss"].item() for batch in batches()]
    cuda_graph.restore(learner, optimizer, saved)
    assert [step(batch)["loss"].item() for batch in batches()] == first


# Wrong gradients a replay could give (hooks on the named parameters, all when None). Each leaves the loss, and
# Adam's first update (about lr x the sign of the gradient), almost as they are.
WRONG_GRADIENTS = {"doubled": (None, lambda gradient: 2 * gradient),
                   "halved": (None, lambda gradient: 0.5 * gradient),
                   "resized": (None, lambda gradient: gradient.sign() * gradient.abs().mean()),  # right signs
                   "one small BatchNorm weight doubled": ((SMALL_BATCHNORM_WEIGHT,), lambda gradient: 2 * gradient),
                   "noise before BatchNorm negated": (BEFORE_BATCHNORM, lambda gradient: -gradient)}


def emulated_capture(mode, learner=None, optimizer=None):
    """A stand-in for cuda_graph.capture on the CPU: 'replay' runs the eager step on the static index, or goes wrong
    as `mode` says."""
    def capture(eager, index, device):
        if mode == "fails":
            raise RuntimeError("operation not permitted when stream is capturing")
        at_capture = index.clone()
        steps_at_capture = [state["step"].clone() for state in optimizer.state.values()] if optimizer else []
        outputs = eager(index)  # like a capture, this leaves the state changed; captured_step restores it
        if mode == "stale":
            return (lambda: None), outputs  # a graph that updates nothing

        def replay():
            names, hook = WRONG_GRADIENTS.get(mode, ((), None))
            hooks = [param.register_hook(hook) for name, param in learner.named_parameters()
                     if names is None or name in names] if hook else []
            counts = [state["step"].clone() for state in optimizer.state.values()] if optimizer else []
            if mode == "stale step count":  # Adam's bias correction of the step the graph was captured at
                for state, value in zip(optimizer.state.values(), steps_at_capture):
                    state["step"].copy_(value)
            statistics = [value.clone() for value in learner.buffers()] if learner else []
            batch = {"frozen index": at_capture, "rows permuted": index.flip(0)}.get(mode, index)
            for name, value in eager(batch).items():
                outputs[name].copy_(value)
            for hook in hooks:
                hook.remove()
            if mode == "stale step count":  # the counter itself moves on
                for state, value in zip(optimizer.state.values(), counts):
                    state["step"].copy_(value + 1)
            if mode == "statistics not updated":
                for value, old in zip(learner.buffers(), statistics):
                    if value.is_floating_point():
                        value.copy_(old)
            if mode == "double":  # right gradients, two updates
                eager(index)

        return replay, outputs
    return capture


ACCEPTED = {"emulated": "", "rows permuted": "", "noise before BatchNorm negated": ""}
REFUSED = {"frozen index": "step 2 of 3: ", "doubled": "step 1 of 3: gradient of ",
           "halved": "step 1 of 3: gradient of ", "resized": "step 1 of 3: gradient of ",
           "one small BatchNorm weight doubled": f"step 1 of 3: gradient of {SMALL_BATCHNORM_WEIGHT} ",
           "stale step count": "step 1 of 3: ", "statistics not updated": "step 1 of 3: BatchNorm statistic ",
           "stale": "step 1 of 3: ", "double": "step 1 of 3: ",
           "fails": "RuntimeError: operation not permitted when stream is capturing)"}


@pytest.mark.parametrize("mode", [*ACCEPTED, *REFUSED])
def test_the_check_refuses_every_wrong_replay_and_a_refusal_keeps_the_eager_trajectory(data, monkeypatch, mode):
    """A replay that differs from the eager step beyond float noise is refused in one warning line naming what
    differed, and training then follows the eager trajectory bit for bit; a replay that differs by summation order
    alone, or in gradients that are noise, is accepted."""
    eager = trajectory(data)
    learner = backbone().train()
    optimizer = adam(learner)
    monkeypatch.setattr(cuda_graph, "side_stream", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(cuda_graph, "capture", emulated_capture(mode, learner, optimizer))
    lines = []
    step = captured(learner, optimizer, data, lines.append)
    run = [{name: value.item() for name, value in step(batch).items()} for batch in batches()], learner.state_dict()
    assert len(lines) == 1
    if mode in ACCEPTED:
        assert lines == ["training step captured as a CUDA graph (checked against 3 eager steps)"]
        if mode == "emulated":
            assert_equal(run, eager)
        else:  # the same training up to rounding, which Adam turns into steps of lr in gradients near zero
            assert [step["loss"] for step in run[0]] == pytest.approx([step["loss"] for step in eager[0]], rel=1e-2)
    else:
        assert lines[0].startswith(f"warning: CUDA graph capture not used ({REFUSED[mode]}"), lines[0]
        assert lines[0].endswith("); training eagerly, which is slower")
        assert_equal(run, eager)
    if mode == "stale step count":
        assert "after the step differs" in lines[0], lines[0]


def test_the_check_takes_bias_noise_as_noise_and_a_wrong_batchnorm_weight_as_wrong(data):
    """mismatch on records of two steps from one state: one BatchNorm weight's gradient x2 and x0.5 is refused although
    its share of the whole gradient is small; the gradients of the biases before BatchNorm may be anything of their
    size; 1e-6 relative noise on every gradient is accepted."""
    learner = backbone().train()
    optimizer = adam(learner)
    images, _ = data
    before = cuda_graph.snapshot(learner, optimizer)
    reference = cuda_graph.observe(step_of(learner, optimizer, data)(batches()[0]), learner, images[:4])
    gradients = reference["gradient"]
    whole = torch.cat([gradient.flatten() for gradient in gradients.values()]).norm()
    assert gradients[SMALL_BATCHNORM_WEIGHT].norm() < 2e-3 * whole
    for factor in (2.0, 0.5):
        wrong = {**gradients, SMALL_BATCHNORM_WEIGHT: factor * gradients[SMALL_BATCHNORM_WEIGHT]}
        problem = cuda_graph.mismatch(reference, {**reference, "gradient": wrong}, before)
        assert problem.startswith(f"gradient of {SMALL_BATCHNORM_WEIGHT} differs"), problem
    for name in BEFORE_BATCHNORM:
        assert gradients[name].norm() < 1e-6 * whole  # rounding noise
    noise = {**gradients, **{name: -3 * gradients[name] for name in BEFORE_BATCHNORM}}
    assert cuda_graph.mismatch(reference, {**reference, "gradient": noise}, before) is None
    noisy = {name: value * (1 + 1e-6 * torch.randn_like(value)) for name, value in gradients.items()}
    assert cuda_graph.mismatch(reference, {**reference, "gradient": noisy}, before) is None
    assert cuda_graph.mismatch(reference, reference, before) is None


def test_a_bug_in_the_step_surfaces_as_itself_once(monkeypatch):
    """Only what capture raises falls back; an error of the step itself is raised, not reported as a capture
    problem first."""
    monkeypatch.setattr(cuda_graph, "side_stream", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(cuda_graph, "capture", emulated_capture("emulated"))
    learner = backbone().train()

    def broken(batch):
        raise ValueError("shapes do not match")

    lines = []
    with pytest.raises(ValueError, match="shapes do not match"):
        cuda_graph.capture_step(broken, learner, adam(learner), batches(), torch.zeros(2, 1, 32, 32),
                                log=lines.append)
    assert lines == []


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


def weights_of(run_dir, count=2):
    return [checkpoint.load(checkpoint.learner_path(run_dir, index))["model"] for index in range(count)]


def test_train_checks_the_batches_it_takes_and_a_refused_capture_trains_as_eager(tiny_root, tmp_path, monkeypatch):
    """train.py, with capture as on CUDA and a graph that keeps the batch it was captured with: the check runs on
    the first batches the loop then takes (here one per epoch, so across epochs), refuses the graph, and the run's
    weights equal bit for bit those of a run with Exp.cuda_graph off. So after a resume."""
    settings = {"Solver": {"bs": 32, "num_epoch": 3}}  # 48 training images: one batch per epoch
    eager = write_config(tmp_path / "eager.yaml", tiny_root, tmp_path / "eager", Exp={"cuda_graph": False},
                         **settings)
    train.main(["--config", str(eager)])

    checked, taken = [], []

    def recording(step, learner, optimizer, batches, fixed, log):
        checked.append([batch.clone() for batch in batches])
        taken.append([])
        captured_step, warning = capture_step(step, learner, optimizer, batches, fixed, log=log)
        return (lambda batch: taken[-1].append(batch.clone()) or captured_step(batch)), warning

    capture_step = cuda_graph.capture_step
    monkeypatch.setattr(train, "captures", lambda cfg, device: True)  # as on CUDA
    monkeypatch.setattr(cuda_graph, "capture_step", recording)
    monkeypatch.setattr(cuda_graph, "side_stream", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(cuda_graph, "capture", emulated_capture("frozen index"))
    refused = write_config(tmp_path / "refused.yaml", tiny_root, tmp_path / "refused", **settings)
    train.main(["--config", str(refused)])
    assert [len(batches) for batches in checked] == [3, 3]
    for batches, steps in zip(checked, taken):
        assert all(torch.equal(a, b) for a, b in zip(batches, steps[:3]))
    assert not torch.equal(checked[0][0], checked[0][1])
    log = (tmp_path / "refused" / "train.log").read_text()
    assert log.count("warning: CUDA graph capture not used (step 2 of 3: ") == 2, log
    for ours, theirs in zip(weights_of(tmp_path / "refused"), weights_of(tmp_path / "eager")):
        assert all(torch.equal(value, theirs[key]) for key, value in ours.items())

    # Resumed at epoch 2 of 3: the check takes the one step left.
    state = checkpoint.load(checkpoint.learner_path(tmp_path / "refused", 1))
    state["epoch"], state["report"] = 2, None
    checkpoint.save(state, checkpoint.learner_path(tmp_path / "refused", 1))
    checked.clear()
    train.main(["--config", str(refused)])
    assert [len(batches) for batches in checked] == [1]
    assert torch.equal(checked[0][0], train.first_batches(48, 32, 3, 1, range(2, 3), 1)[0])


def test_the_noise_script_measures_what_the_check_accepts(capsys):
    """scripts/dev/capture_noise.py: the headroom of each tolerance over the permuted-rows noise, above 1 (the check
    accepts it), and the margin by which a halved BatchNorm weight's gradient is refused."""
    noise = load_script("dev/capture_noise")
    noise.main(["--networks", "AE", "--lambdas", "1", "--img-size", "32", "--bs", "8", "--n-train", "32"])
    lines = capsys.readouterr().out.splitlines()
    result, = json.loads(lines[-1])["results"]
    assert (result["network"], result["Lambda"]) == ("AE", 1.0)
    assert all(result[kind] > 1 for kind in [*cuda_graph.TOLERANCES, "update"]), result
    assert result["halved_margin"] > 1 and 0 < result["bn_weight_share"] < 0.01
    assert len(lines) == len(cuda_graph.TOLERANCES) + 3


def test_the_noise_script_compares_whole_runs_with_and_without_rows_permuted(monkeypatch, capsys):
    """--runs: each of check_gpu's settings trained as check_gpu trains them, eagerly and with train_step on the rows
    reversed, and compared as check_gpu compares (here with runs made up)."""
    noise = load_script("dev/capture_noise")
    trained = []

    def made_up(overrides, device):
        permuted = train.train_step is noise.permuted_rows
        trained.append((overrides, permuted))
        return {"losses": {"learner0 epoch 1": 1.1 if permuted else 1.0},
                "scores": {"rec": np.array([2.0 if permuted else 1.0, 4.0])}}

    monkeypatch.setattr(noise.check_gpu, "train_and_score", made_up)
    monkeypatch.setattr(noise, "make_demo", lambda *args, **kwargs: None)
    eager_step = train.train_step
    noise.main(["--runs", "--tiny"])
    assert train.train_step is eager_step
    assert [permuted for _, permuted in trained] == [False, True] * len(noise.check_gpu.SETTINGS)
    assert all(set(noise.check_gpu.TINY) <= set(overrides) for overrides, _ in trained)
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [row["difference"] for row in report["results"]] == pytest.approx([0.1, 1 / 17 ** 0.5] * 2)

    seen = {}
    monkeypatch.setattr(noise, "train_step", lambda *args: seen.update(args=args))
    x, features = torch.arange(4.0).view(4, 1), torch.arange(8.0).view(4, 2)
    noise.permuted_rows("learner", "optimizer", x, [features], 0.5)
    assert torch.equal(seen["args"][2], x.flip(0)) and torch.equal(seen["args"][3][0], features.flip(0))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def on_cuda(data):
    images, cache = data
    return images.cuda(), [c.cuda() for c in cache]


@cuda
@pytest.mark.parametrize("network", ["AE", "AE-U", "MemAE"])
def test_cuda_graph_step_equals_eager_step(data, network):
    """On a GPU: the step is really captured, passes its check, and trains as the eager step does (capturable Adam
    in both)."""
    runs = {}
    for capture in (True, False):
        learner = backbone(network).cuda().train()
        optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3, betas=(0.5, 0.999), capturable=True)
        lines = []
        step = captured(learner, optimizer, on_cuda(data), lines.append) if capture else \
            step_of(learner, optimizer, on_cuda(data))
        losses = [{name: value.item() for name, value in step(batch.cuda()).items()} for batch in batches() * 3]
        runs[capture] = losses, {key: value.cpu() for key, value in learner.state_dict().items()}
        if capture:
            assert lines == ["training step captured as a CUDA graph (checked against 3 eager steps)"], lines
    assert_same(runs[True], runs[False], rtol=1e-3)


@cuda
def test_a_real_graph_that_keeps_its_batch_is_refused(data, monkeypatch):
    """On a GPU: a captured graph replayed without its new batch indices (as if the copy into the static index were
    lost) is refused at the second step."""
    real = cuda_graph.capture

    def frozen(eager, index, device):
        replay, outputs = real(eager, index, device)
        at_capture = index.clone()
        return (lambda: (index.copy_(at_capture), replay())), outputs

    monkeypatch.setattr(cuda_graph, "capture", frozen)
    learner = backbone().cuda().train()
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3, betas=(0.5, 0.999), capturable=True)
    lines = []
    captured(learner, optimizer, on_cuda(data), lines.append)
    assert lines[0].startswith("warning: CUDA graph capture not used (step 2 of 3: "), lines


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
