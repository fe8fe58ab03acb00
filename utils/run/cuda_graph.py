"""The training step captured as a CUDA graph (Exp.cuda_graph): the same maths, one graph launch per step.

A captured step replays the step it is given (forward, backward and Adam's update): the batch is gathered inside
the graph from a static index tensor, so each step copies 64 indices and replays. Before it is used, one replay is
checked against one eager step from the same state: the loss terms, every parameter's gradient and the weights
after the update must agree within float noise (Adam's first update is about lr x sign(gradient), so the weights
alone would pass a wrongly scaled backward). A failed capture or check falls back to the eager step with a warning;
an error of the step itself is raised as it is. Training starts from the untouched initial state either way.
"""
import contextlib

import torch

from utils.errors import one_line

WARMUP_STEPS = 3  # eager steps on a side stream before capture, as the CUDA graph recipe asks
LOSS_RTOL = 1e-4  # captured vs eager loss terms of the same step from the same state
GRADIENT_RTOL = 1e-3  # captured vs eager gradient of each parameter, relative to its norm
UPDATE_RTOL = 1e-2  # captured vs eager weights after that step, relative to the size of the update


def capture_step(step, learner, optimizer, batch_size, log=print):
    """(step, warning): `step(batch_indices) -> {name: loss-term tensor}` as a checked CUDA graph, or the step
    itself with the warning why not (correct, but slower). A captured step's returned tensors are overwritten by the
    next step, so use them (e.g. add them to running totals) before calling it again."""
    captured, problem = captured_step(step, learner, optimizer, batch_size)
    if captured is None:
        warning = f"CUDA graph capture not used ({problem}); training eagerly, which is slower"
        log(f"warning: {warning}")
        return step, warning
    log("training step captured as a CUDA graph (checked against an eager step)")
    return captured, None


def captured_step(eager, learner, optimizer, batch_size):
    """(step, None) with a checked CUDA-graph step, or (None, why) when capture or the check fails; the learner and
    the optimizer are left in their initial state."""
    device = next(learner.parameters()).device
    index = torch.arange(batch_size, device=device)  # the graph's static input, and the batch of the check
    initial = snapshot(learner, optimizer)
    try:
        with side_stream(device):
            reference = record(eager(index), learner)  # one eager step from the initial state
            for _ in range(WARMUP_STEPS - 1):
                eager(index)
        try:
            replay, outputs = capture(eager, index, device)
        except RuntimeError as err:  # what capture raises for an operation a graph cannot hold
            return None, one_line(err)
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
    """What the check compares after a step: the loss terms, every parameter's gradient, all weights and buffers."""
    return {"terms": {name: value.detach().double().clone() for name, value in terms.items()},
            "gradients": {name: (torch.zeros_like(param) if param.grad is None else param.grad).double().clone()
                          for name, param in learner.named_parameters()},
            "weights": weights_vector(learner)}


def mismatch(reference, candidate, initial) -> str | None:
    """Why a step (the captured one) differs from the reference (eager) step from the same state, or None when they
    agree within float noise: loss terms, then each parameter's gradient, then the weights after the update."""
    for name, value in reference["terms"].items():
        other = candidate["terms"][name]
        if not torch.allclose(other, value, rtol=LOSS_RTOL, atol=1e-6):
            return f"{name} {other.item():.6g} captured vs {value.item():.6g} eager"
    for name, value in reference["gradients"].items():
        error = (candidate["gradients"][name] - value).norm().item()
        if not error <= GRADIENT_RTOL * value.norm().item() + 1e-12:
            return f"gradient of {name} differs by {error:.3g} (its norm is {value.norm().item():.3g})"
    start = torch.cat([value.double().flatten() for value in initial["model"] if value.is_floating_point()])
    update = (reference["weights"] - start).norm().item()
    error = (candidate["weights"] - reference["weights"]).norm().item()
    if not error <= UPDATE_RTOL * update + 1e-9:
        return f"weights after one step differ by {error:.3g} (the update itself is {update:.3g})"
    return None
