"""The fast path, the same maths: the frozen seniors' terms computed once for the whole training set, and a
training step captured as a CUDA graph.

A captured step replays the step it is given (forward, backward and Adam's update) as one graph launch: the batch
is gathered inside the graph from a static index tensor, so each step copies 64 indices and replays. Capture is
checked once against the eager step from the same state and falls back to it (with a warning) on any error or
mismatch. Whatever happens, training starts from the untouched initial state: warm-up and check steps are undone.
"""
import contextlib

import torch

from utils.errors import one_line

WARMUP_STEPS = 3  # eager steps on a side stream before capture, as the CUDA graph recipe asks
LOSS_RTOL = 1e-4  # captured vs eager loss of the same step from the same state
UPDATE_RTOL = 1e-2  # captured vs eager weights after that step, relative to the size of the update


def senior_terms(seniors, images, terms_of, cache=True):
    """terms(batch) -> [terms_of(senior, images[batch]) for each senior]. With cache, computed once for the whole of
    `images` and sliced: exact, since the seniors are frozen, in eval mode, and there is no augmentation."""
    if not cache:
        return lambda batch: [terms_of(senior, images[batch]) for senior in seniors]
    cached = [terms_of(senior, images) for senior in seniors]
    return lambda batch: [part[batch] for part in cached]


def capture_step(step, learner, optimizer, batch_size, capture=False, log=print):
    """(step, warning): the training step `step(batch_indices) -> {name: loss-term tensor}` it is given, or, with
    capture=True (CUDA only; Adam must be capturable), the same step as a checked CUDA graph; warning is None, or
    why a capture that was asked for fell back to the eager step (correct, but slower). A captured step's returned
    tensors are overwritten by the next step, so use them (e.g. add them to running totals) before calling it again.
    """
    if not capture:
        return step, None
    try:
        captured, problem = captured_step(step, learner, optimizer, batch_size)
    except Exception as err:  # noqa: BLE001  any failure to capture leaves the eager step, which is exact
        captured, problem = None, one_line(err)
    if captured is None:
        warning = f"CUDA graph capture not used ({problem}); training eagerly, which is slower"
        log(f"warning: {warning}")
        return step, warning
    log("training step captured as a CUDA graph (checked against an eager step)")
    return captured, None


def captured_step(eager, learner, optimizer, batch_size):
    """(step, None) with a checked CUDA-graph step, or (None, why) when the check fails; state is left untouched."""
    device = next(learner.parameters()).device
    index = torch.arange(batch_size, device=device)  # the graph's static input, and the batch of the check
    initial = snapshot(learner, optimizer)
    try:
        with side_stream(device):
            reference = record(eager(index), learner)  # one eager step from the initial state
            for _ in range(WARMUP_STEPS - 1):
                eager(index)
        replay, outputs = capture(eager, index, device)
        restore(learner, optimizer, initial)
        replay()
        problem = mismatch(reference, record(outputs, learner), initial)
    finally:
        restore(learner, optimizer, initial)
    if problem:
        return None, problem

    def step(batch):
        index.copy_(batch)
        replay()
        return outputs

    return step, None


@contextlib.contextmanager
def side_stream(device):
    """Run the block on a fresh CUDA stream (warm-up before capture must not run on the capturing stream)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    try:
        with torch.cuda.stream(stream):
            yield
    finally:  # also on failure: what follows (restoring the state) must not race the side stream
        torch.cuda.current_stream(device).wait_stream(stream)


def capture(eager, index, device):
    """Capture one eager step on images[index] as a CUDA graph: (replay, static output tensors).

    On a stream of the learner's own device: without one, torch.cuda.graph captures on the current device (cuda:0
    unless set), and the step's work on cuda:N would run outside the capture.
    """
    with torch.cuda.device(device):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(device)):
            outputs = eager(index)
    return graph.replay, outputs


def snapshot(learner, optimizer) -> dict:
    """Copies of the learner's weights and buffers and of the optimizer state."""
    return {"model": [value.clone() for value in learner.state_dict().values()],
            "optimizer": {param: {key: value.clone() for key, value in state.items()}
                          for param, state in optimizer.state.items()}}


@torch.no_grad()
def restore(learner, optimizer, saved) -> None:
    """Write a snapshot back in place (a captured graph keeps pointing at the same tensors).

    Optimizer state created after the snapshot is zeroed: a zero Adam state at step 0 updates exactly as a fresh one.
    """
    for value, old in zip(learner.state_dict().values(), saved["model"]):
        value.copy_(old)
    for param, state in optimizer.state.items():
        old = saved["optimizer"].get(param)
        for key, value in state.items():
            if torch.is_tensor(value):
                value.copy_(old[key]) if old is not None else value.zero_()


def weights_vector(learner) -> torch.Tensor:
    return torch.cat([value.detach().double().flatten() for value in learner.state_dict().values()
                      if value.is_floating_point()])


def record(terms, learner) -> dict:
    """What the check compares after a step: the loss terms and all weights and buffers."""
    return {"terms": {name: value.detach().double().clone() for name, value in terms.items()},
            "weights": weights_vector(learner)}


def mismatch(reference, candidate, initial) -> str | None:
    """Why a captured step differs from the eager one (None when it agrees within float noise)."""
    for name, value in reference["terms"].items():
        other = candidate["terms"][name]
        if not torch.allclose(other, value, rtol=LOSS_RTOL, atol=1e-6):
            return f"{name} {other.item():.6g} captured vs {value.item():.6g} eager"
    start = torch.cat([value.double().flatten() for value in initial["model"] if value.is_floating_point()])
    update = (reference["weights"] - start).norm().item()
    error = (candidate["weights"] - reference["weights"]).norm().item()
    if not error <= UPDATE_RTOL * update + 1e-9:
        return f"weights after one step differ by {error:.3g} (the update itself is {update:.3g})"
    return None


def adam(learner, solver, device, capture=False):
    """The training optimizer: Adam (betas 0.5, 0.999) in its fused implementation, on the CPU and on CUDA.

    Fused is one kernel for every parameter; on CUDA the alternative PyTorch picks when `fused=False` is passed
    explicitly is a loop of several kernels per parameter, most of a captured step's launches. A captured step
    also needs `capturable` (Adam's step counter on the GPU).
    """
    return torch.optim.Adam(learner.parameters(), lr=solver.lr, betas=(0.5, 0.999),
                            weight_decay=solver.weight_decay, **adam_options(device, capture))


def adam_options(device, capture=False) -> dict:
    return {"fused": torch.device(device).type in ("cpu", "cuda"), "capturable": capture}


def load_optimizer_state(optimizer, state) -> None:
    """Load a checkpoint's optimizer state but keep this optimizer's `capturable` and `fused` (a run may resume on
    another device). Adam keeps its step counter on the parameters' device when capturable, on the CPU otherwise.

    Each moment tensor is then laid out like its parameter: `load_state_dict` keeps the saved strides, so a state
    written on a GPU (standard layout) would meet channels-last weights on the CPU, and the fused kernel, which
    walks both in memory order, would pair every 4-D weight with the wrong moments.
    """
    kept = ("capturable", "fused")
    groups = [{**saved, **{key: current.get(key) for key in kept}}
              for saved, current in zip(state["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({**state, "param_groups": groups})
    for param, param_state in optimizer.state.items():
        for key, value in param_state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                param_state[key] = torch.empty_like(param).copy_(value)  # empty_like keeps the param's strides
