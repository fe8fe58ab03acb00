"""Watching a learner train: the loss terms of an epoch, the shape of its features on a fixed probe of training
images, and the checks at its end (precise BatchNorm statistics, eval- against train-mode reconstruction).

D2UE trains on every normal image, so the probe is a fixed slice of the training set, not a held-out one.
"""
import math

import torch

from utils import seeding
from utils.errors import UserError
from utils.method.batchnorm import eval_and_train_errors, eval_mode_warning, recompute_bn_stats
from utils.method.cka import spectrum

PROBE_SIZE = 256  # training images on which each learner's feature shape and BatchNorm health are watched
PROBE_SHARE = 0.02  # at most about this share of training time goes to the probe


def probe_of(images, seed, size=PROBE_SIZE):
    order = torch.randperm(len(images), generator=seeding.generator(seed, 0, "probe"))[:size]
    return images[order.sort().values.to(images.device)]


def probe_every(n_train, probe_size=PROBE_SIZE) -> int:
    """Epochs between two looks at the probe: a forward pass of the probe costs about a third of training on as
    many images, so on small training sets it is looked at every few epochs (always at the first and the last)."""
    return max(1, math.ceil(probe_size / (3 * n_train * PROBE_SHARE)))


def looks_at_probe(epoch, num_epoch, every) -> bool:
    """epoch counts from 1."""
    return epoch == 1 or epoch == num_epoch or epoch % every == 0


@torch.no_grad()
def feature_shape(learner, probe) -> dict:
    """Effective rank and top-direction share of the learner's tapped features on the probe, in eval mode (the
    mode the scores use): a junior that piles its variance into one direction shows here."""
    was_training = learner.training
    learner.eval()
    rank, share = spectrum(learner(probe)["features"])
    learner.train(was_training)
    return {"effective_rank": rank.item(), "top_share": share.item()}


class EpochTotals:
    """The loss terms summed over an epoch's steps, and the step at which each first went non-finite, kept on the
    device as one vector each (no host sync inside the epoch, a handful of small ops per step)."""

    def __init__(self):
        self.names, self.sums, self.first_bad = None, None, None

    def add(self, terms: dict, step: int) -> None:
        values = torch.stack(list(terms.values()))
        bad_now = torch.where(torch.isfinite(values), math.inf, float(step))
        if self.sums is None:
            self.names, self.sums, self.first_bad = list(terms), values, bad_now
        else:
            self.sums, self.first_bad = self.sums + values, torch.minimum(self.first_bad, bad_now)

    def means(self, steps: int) -> dict:
        return dict(zip(self.names, (self.sums / steps).tolist()))

    def first_not_finite(self) -> list:
        """The terms that went non-finite at the earliest step (the others followed through the weights)."""
        first = dict(zip(self.names, self.first_bad.tolist()))
        earliest = min(first.values())
        return [name for name, step in first.items() if step == earliest and name != "loss"] or ["loss"]


def not_finite(where, names, path) -> UserError:
    """The error for a loss that went non-finite: the terms that did first, and the likely fix for those."""
    repelled = all(name == "repulsion" or name.startswith("cka_senior") for name in names)
    hint = ("the reconstruction stayed finite: try another Model.repulsion or a lower Solver.Lambda" if repelled
            else "try a lower Solver.lr")
    return UserError(f"{where}: loss is not finite, first in {', '.join(names)}; the last good checkpoint is kept "
                     f"at {path}; {hint}")


def finish_learner(index, learner, images, probe, cfg, log, step_warning=None) -> dict:
    """After the last epoch: precise BatchNorm statistics if asked, then eval- against train-mode reconstruction
    error on the probe. Returns the report (kept in the checkpoint; eval.py copies it into results.json), whose
    "warnings" are eval mode much worse than train mode (logged here as one line) and `step_warning` (a training
    step that could not be captured, logged by utils/run/fast.py when it happened)."""
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
    report["warnings"] = [warning for warning in (eval_warning, step_warning) if warning]
    return report


def warnings_of(report) -> list:
    """A learner report's warnings (a report may also hold one under "warning", as checkpoints once did)."""
    if not report:
        return []
    return report.get("warnings", [report["warning"]] if report.get("warning") else [])
