"""The training step captured as a CUDA graph (Exp.cuda_graph): the same maths, one graph launch per step.

A captured step replays the step it is given (forward, backward and Adam's update): the batch is gathered inside
the graph from a static index tensor, so each step copies its indices and replays. Before it is used, the graph is
checked on the first CHECK_STEPS steps training will take (their batches and Adam step counts), each replayed from
the eager run's state before that step: its loss terms, gradients, BatchNorm statistics and the learner's outputs on
a fixed batch against the eager step's, and its weights and Adam state against Adam's step applied eagerly to its
gradients. The tolerances are about 10 times the largest difference the same eager step makes with its batch rows
permuted (summation order alone), 2 times for MemAE's gradients (docs/speed.md: the figures, and how they were
measured). A failed capture or check falls back to the eager step with a warning; an error of the step itself is
raised as it is. Training starts from the untouched state either way.
"""
import contextlib

import torch

from utils.errors import one_line

WARMUP_STEPS = 3  # eager steps on a side stream before capture, as the CUDA graph recipe asks
CHECK_STEPS = 3  # steps compared: a graph that keeps its first batch or step count differs from step 2 on

# A captured step against the eager step from the same state: (rtol, atol) with |captured - eager| <= rtol * |eager
# part| + atol * |eager whole| (norms), the whole being all parts of that kind together: a part whose true value is
# zero (the gradient of a bias before BatchNorm) differs by rounding noise alone.
TOLERANCES = {
    "loss": (2e-4, 0.0),  # each loss term
    "gradient": (0.2, 2e-5),  # each parameter's gradient
    "statistics": (1e-4, 0.0),  # each BatchNorm buffer, relative to its change in the step
    "output": (0.3, 0.0),  # each output of the learner on a fixed batch, in train and eval mode
}
# The weights and Adam's state after a captured step against Adam's step applied eagerly to its gradients, relative
# to their change in the step: the same arithmetic on the same numbers.
UPDATE_TOLERANCE = (1e-4, 1e-6)


def capture_step(step, learner, optimizer, batches, fixed, log=print):
    """(step, warning): `step(batch_indices) -> {name: loss-term tensor}` as a checked CUDA graph, or the step
    itself with the warning why not (correct, but slower). `batches`: the batch indices of the first steps training
    will take (CHECK_STEPS of them, fewer when training has fewer); `fixed`: a batch of images the learner's outputs
    are compared on. A captured step's returned tensors are overwritten by the next step, so use them (e.g. add them
    to running totals) before calling it again."""
    captured, problem = captured_step(step, learner, optimizer, batches, fixed)
    if captured is None:
        warning = f"CUDA graph capture not used ({problem}); training eagerly, which is slower"
        log(f"warning: {warning}")
        return step, warning
    log(f"training step captured as a CUDA graph (checked against {len(batches)} eager steps)")
    return captured, None


def captured_step(eager, learner, optimizer, batches, fixed):
    """(step, None) with a checked CUDA-graph step, or (None, why) when capture or the check fails; the learner and
    the optimizer are left in the state they came in."""
    device = next(learner.parameters()).device
    index = batches[0].clone()  # the graph's static input
    initial = snapshot(learner, optimizer)
    try:
        before, references = [], []
        with side_stream(device):  # the eager steps of the check double as the warm-up
            for batch in batches:
                before.append(snapshot(learner, optimizer))
                references.append(observe(eager(batch), learner, fixed))
            for _ in range(WARMUP_STEPS - len(batches)):
                eager(batches[-1])
        try:
            replay, outputs = capture(eager, index, device)
        except RuntimeError as err:  # what capture raises for an operation a graph cannot hold
            return None, one_line(err)
        for number, (batch, state, reference) in enumerate(zip(batches, before, references), 1):
            restore(learner, optimizer, state)
            index.copy_(batch)
            replay()
            problem = mismatch(reference, observe(outputs, learner, fixed), state) or \
                mismatched_update(learner, optimizer, state)
            if problem:
                return None, f"step {number} of {len(batches)}: {problem}"
    finally:
        restore(learner, optimizer, initial)

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
    return {"model": {name: value.clone() for name, value in learner.state_dict().items()},
            "optimizer": {param: {key: value.clone() for key, value in state.items()}
                          for param, state in optimizer.state.items()}}


@torch.no_grad()
def restore(learner, optimizer, saved) -> None:
    """Write a snapshot back in place (a captured graph keeps pointing at the same tensors).

    Optimizer state created after the snapshot is zeroed: a zero Adam state at step 0 updates exactly as a fresh one.
    """
    for name, value in learner.state_dict().items():
        value.copy_(saved["model"][name])
    for param, state in optimizer.state.items():
        old = saved["optimizer"].get(param)
        for key, value in state.items():
            if torch.is_tensor(value):
                value.copy_(old[key]) if old is not None else value.zero_()


def as_double(values: dict) -> dict:
    return {name: value.detach().double().clone() for name, value in values.items()}


@torch.no_grad()
def outputs_on(learner, images) -> dict:
    """The learner's outputs on `images` in train mode and in eval mode; its buffers and mode are left as they were
    (the train-mode pass would update the running statistics)."""
    was_training, saved = learner.training, {name: value.clone() for name, value in learner.named_buffers()}
    outputs = {}
    for mode in ("train", "eval"):
        learner.train(mode == "train")
        outputs.update({f"{name} ({mode} mode)": value for name, value in learner(images).items()})
    for name, value in learner.named_buffers():
        value.copy_(saved[name])
    learner.train(was_training)
    return as_double(outputs)


def observe(terms, learner, fixed) -> dict:
    """What a step is compared on: its loss terms, every parameter's gradient, the BatchNorm buffers after it (float
    statistics, and the integer batch counts apart) and the learner's outputs on the fixed batch."""
    buffers = dict(learner.named_buffers())
    return {"loss": as_double(terms),
            "gradient": as_double({name: torch.zeros_like(param) if param.grad is None else param.grad
                                   for name, param in learner.named_parameters()}),
            "statistics": as_double({name: value for name, value in buffers.items() if value.is_floating_point()}),
            "counts": {name: value.clone() for name, value in buffers.items() if not value.is_floating_point()},
            "output": outputs_on(learner, fixed)}


def settled(learner, optimizer) -> dict:
    """The weights and the optimizer state (Adam's moments and step count) by name."""
    names = {param: name for name, param in learner.named_parameters()}
    return as_double({**dict(learner.named_parameters()),
                      **{f"{names[param]} {key}": value for param, state in optimizer.state.items()
                         for key, value in state.items() if torch.is_tensor(value)}})


def table(eager, captured, scale) -> list:
    """[(name, error, part, whole)]: the norm of each captured-minus-eager difference, of the value it is relative
    to (`scale`'s of that name) and of all of `scale` together."""
    whole = torch.cat([value.flatten() for value in scale.values()]).norm().item() if scale else 0.0
    return [(name, (captured[name] - value).norm().item(), scale[name].norm().item(), whole)
            for name, value in eager.items()]


def differences(reference, candidate, before) -> dict:
    """{what: table}: a captured step against the eager step from the same state `before` (a snapshot). Statistics
    are relative to their change in the eager step, the rest to their eager value."""
    change = {name: value - before["model"][name].double() for name, value in reference["statistics"].items()}
    return {what: table(reference[what], candidate[what], change if what == "statistics" else reference[what])
            for what in TOLERANCES}


def first_beyond(rows, tolerance, what) -> str | None:
    rtol, atol = tolerance
    for name, error, part, whole in rows:
        if not error <= rtol * part + atol * whole:  # also refuses a NaN
            return (f"{WHAT[what].format(name=name)} differs by {error:.3g} ({SCALE[what]} {part:.3g}, of all "
                    f"together {whole:.3g})")
    return None


def mismatch(reference, candidate, before) -> str | None:
    """Why a step (the captured one) differs from the reference (eager) step from the same state `before`, or None
    when they agree within float noise (TOLERANCES)."""
    for name, count in reference["counts"].items():
        if not torch.equal(candidate["counts"][name], count):
            return f"{name} {candidate['counts'][name].item()} captured vs {count.item()} eager"
    for what, rows in differences(reference, candidate, before).items():
        problem = first_beyond(rows, TOLERANCES[what], what)
        if problem:
            return problem
    return None


def mismatched_update(learner, optimizer, before) -> str | None:
    """Why the weights and optimizer state a captured step left differ from the optimizer's step applied eagerly to
    that step's own gradients from the same state `before`, or None (UPDATE_TOLERANCE). Leaves the eager update."""
    return first_beyond(update_table(learner, optimizer, before), UPDATE_TOLERANCE, "update")


@torch.no_grad()
def update_table(learner, optimizer, before) -> list:
    """The table of the weights and optimizer state now against the optimizer's step applied eagerly to the
    gradients now from the state `before`, relative to their change in that step. (Against the eager step's own
    weights, Adam would turn the rounding noise of a gradient near zero into differences as large as lr.)"""
    captured = settled(learner, optimizer)
    restore(learner, optimizer, before)  # weights and optimizer state; the gradients stay
    start = settled(learner, optimizer)
    optimizer.step()
    expected = settled(learner, optimizer)
    return table(expected, captured, {name: value - start[name] for name, value in expected.items()})


WHAT = {"loss": "loss term {name}", "gradient": "gradient of {name}", "statistics": "BatchNorm statistic {name}",
        "output": "output {name} on a fixed batch", "update": "{name} after the step"}
SCALE = {"loss": "its size", "gradient": "its norm", "statistics": "its change", "output": "its norm",
         "update": "its change in the step"}
