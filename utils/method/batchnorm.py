"""BatchNorm statistics of a learner: recompute them exactly after training (precise BN), and check that eval mode
still reconstructs as well as train mode: what train.py does at a learner's end (finish_learner).

During training each BatchNorm layer keeps an exponential average (momentum 0.1) of its batch statistics, so at the
end it mostly describes the last ten or twenty batches. When a learner's features drift late in training (a junior
piling its variance into one direction), those statistics no longer describe what it learned, and its eval-mode
reconstructions, the only ones the scores use, get worse than its train-mode ones.
"""
import torch
from torch.optim.swa_utils import update_bn

from utils import seeding
from utils.errors import UserError

# Eval-mode error above this multiple of the train-mode error gets a warning: between the small gap of healthy learners
# (averaged against per-batch statistics) and that of a learner whose statistics went stale (README).
MUCH_WORSE = 1.25


@torch.no_grad()
def recompute_bn_stats(learner, images, batch_size, seed=0):
    """Replace every BatchNorm layer's running statistics by their exact average over one pass of `images` (model
    input, on the learner's device) in train mode, as torch.optim.swa_utils.update_bn does: statistics reset, then a
    cumulative average (momentum None) over the batches; weights untouched, mode and momenta restored.

    The pass uses a seeded shuffle in equal batches of the training batch size and drops the last
    len(images) % batch_size images, exactly as training does: train mode normalised with the statistics of random
    full batches, so those are the statistics eval mode should use, and equal batches make the average of the
    per-batch means the mean over the pass. Like BatchNorm itself, running_var then holds the average of the per-batch
    unbiased variances. Returns the learner.
    """
    steps = len(images) // batch_size
    if steps == 0:
        raise UserError(f"only {len(images)} images, fewer than one batch of {batch_size}, to recompute the "
                        "BatchNorm statistics")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).to(images.device)
    batches = (images[order[i * batch_size:(i + 1) * batch_size]] for i in range(steps))
    update_bn(batches, learner)
    return learner


@torch.no_grad()
def eval_and_train_errors(learner, images, batch_size):
    """(eval-mode, train-mode) mean squared error of the reconstruction x_hat on `images`, the same full batches
    of `batch_size` (at most len(images)) in both modes; weights, BatchNorm buffers and mode are left as they were.

    MSE of x_hat rather than each backbone's loss: it is the same measure for all three backbones (AE-U's loss mixes
    in its variance head and MemAE's its attention entropy). The train-mode pass updates the running statistics, so
    all buffers are saved first and written back after.
    """
    batch_size = min(batch_size, len(images))
    steps = len(images) // batch_size
    was_training = learner.training
    saved = {name: buffer.clone() for name, buffer in learner.named_buffers()}
    errors = []
    try:
        for training in (False, True):
            learner.train(training)
            total = sum((learner(x)["x_hat"] - x).pow(2).mean()
                        for x in (images[i * batch_size:(i + 1) * batch_size] for i in range(steps)))
            errors.append(float(total / steps))
    finally:
        for name, buffer in learner.named_buffers():
            buffer.copy_(saved[name])
        learner.train(was_training)
    return errors[0], errors[1]


def eval_mode_much_worse(eval_error, train_error, ratio=MUCH_WORSE) -> bool:
    return eval_error > ratio * train_error


def eval_mode_warning(name, eval_error, train_error, ratio=MUCH_WORSE):
    """One warning line naming the learner when its eval mode is much worse than its train mode, else None."""
    if not eval_mode_much_worse(eval_error, train_error, ratio):
        return None
    times = eval_error / train_error if train_error > 0 else float("inf")
    return (f"{name}: reconstruction error in eval mode {eval_error:.4g} is {times:.2f}x its "
            f"train-mode error {train_error:.4g} on the same images; its BatchNorm running statistics do not "
            "describe its features (Solver.precise_bn=true recomputes them)")


def buffers_of(learner) -> dict:
    """A copy of every buffer (the BatchNorm statistics among them), as load_buffers puts them back."""
    return {name: buffer.detach().clone() for name, buffer in learner.named_buffers()}


@torch.no_grad()
def load_buffers(learner, buffers) -> None:
    for name, buffer in learner.named_buffers():
        buffer.copy_(buffers[name])


def finished_as(report, cfg) -> bool:
    """Whether the finish that wrote a checkpoint's `report` is the one `cfg` asks for: precise BatchNorm statistics
    recomputed or not (a report of precise statistics keeps the eval-mode error from before them)."""
    return report is None or ("eval_mse_before_precise_bn" in report) == cfg.Solver.precise_bn


def finish_learner(index, learner, images, probe, cfg, log) -> dict:
    """After the last epoch: precise BatchNorm statistics if asked, then eval- against train-mode reconstruction
    error on the probe. Returns the report (kept in the checkpoint; eval.py copies it into results.json), whose
    "warnings" list holds eval mode much worse than train mode (also logged here, as one line)."""
    report = {}
    if cfg.Solver.precise_bn:
        report["eval_mse_before_precise_bn"] = eval_and_train_errors(learner, probe, cfg.Solver.bs)[0]
        recompute_bn_stats(learner, images, cfg.Solver.bs,
                           seed=seeding.stream_seed(cfg.Solver.seed, index, "precise_bn"))
    report["eval_mse"], report["train_mse"] = eval_and_train_errors(learner, probe, cfg.Solver.bs)
    log.info(f"learner {index}: reconstruction MSE on {len(probe)} training images {report['eval_mse']:.5f} in eval "
             f"mode, {report['train_mse']:.5f} in train mode"
             + (f" (eval mode {report['eval_mse_before_precise_bn']:.5f} before precise BatchNorm statistics)"
                if cfg.Solver.precise_bn else ""))
    eval_warning = eval_mode_warning(f"learner {index}", report["eval_mse"], report["train_mse"])
    if eval_warning:
        log.info(f"warning: {eval_warning}")
    report["warnings"] = [eval_warning] if eval_warning else []
    return report
