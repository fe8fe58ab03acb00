"""Train D2UE's ensemble: K learners one after another, each junior repelled from its frozen seniors (RAR).

    python train.py --config cfgs/RSNA_AE.yaml [Section.key=value ...]

Rerunning the same command resumes: finished learners are skipped and an interrupted learner continues from its
last checkpoint. At the end the run's normal reference is made (utils/method/reference.py). SIGTERM or SIGUSR1
(pre-emption) stops the run at the end of the current epoch with a checkpoint. One command at a time works in a run
folder; a second is refused. The test set is never touched here.
"""
import argparse
import itertools
import math
import time

import torch
from tqdm import tqdm

import models
from datasets.benchmark import describe
from datasets.medad import training_set
from models import to_model_input
from utils import seeding
from utils.atomic import remove_leftovers
from utils.errors import ArgumentParser, UserError, cli
from utils.method import batchnorm, feature_shape
from utils.method.rar import features_of, repulsion
from utils.method.reference import ensure as ensure_reference
from utils.run import checkpoint, config, cuda_graph, runlock, stop
from utils.run.optimizer import adam, load_optimizer_state
from utils.run.runtime import RunLog, make_run_dir, setup


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file in cfgs/")
    parser.add_argument("overrides", nargs="*", help="Section.key=value (e.g. Solver.num_epoch=30) or a preset file "
                        "(e.g. cfgs/presets/recommended.yaml), applied in order")
    return parser.parse_args(argv)


def prepare_run(cfg, run_dir):
    """Refuse a run folder that holds another experiment, store the resolved config, and remove the temporary
    files a killed writer left (only the holder of the folder's lock writes in it)."""
    checkpoint.check_run_folder(run_dir, cfg)
    config.save(cfg, run_dir / "config.yaml")
    remove_leftovers(run_dir)


def train_step(learner, optimizer, x, seniors, Lambda) -> dict:
    """One update of the learner on the batch x: forward, the backbone's loss plus, for a junior, Lambda x its mean
    linear CKA with its seniors' features of x (RAR), backward, Adam's step. Returns the loss terms, detached; the
    epoch checks that they stayed finite (a check here would wait for the GPU at every step)."""
    optimizer.zero_grad(set_to_none=True)
    out = learner(x)
    loss, terms = learner.loss(out, x)
    if seniors:
        similarity, per_senior = repulsion(out["features"], seniors)
        loss = loss + Lambda * similarity
        terms = {**terms, "repulsion": similarity, **{f"cka_senior{j}": value for j, value in enumerate(per_senior)}}
    loss.backward()
    optimizer.step()
    return {name: value.detach() for name, value in {"loss": loss, **terms}.items()}


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
    hint = "the reconstruction stayed finite: try a lower Solver.Lambda" if repelled else "try a lower Solver.lr"
    return UserError(f"{where}: loss is not finite, first in {', '.join(names)}; the last good checkpoint is kept "
                     f"at {path}; {hint}")


def epoch_order(n, seed, index, epoch):
    """The shuffle of one epoch, a function of (seed, learner, epoch) alone so that a resumed run repeats it."""
    return torch.randperm(n, generator=seeding.generator(seed, index, "shuffle", epoch))


def first_batches(n, bs, seed, index, epochs, count):
    """The batch indices of the first `count` steps of the epochs `epochs` (counted from 0), as the loop takes them:
    what the captured step is checked on."""
    batches = (order[i * bs:(i + 1) * bs] for epoch in epochs
               for order in [epoch_order(n, seed, index, epoch)] for i in range(n // bs))
    return list(itertools.islice(batches, count))


def new_learner(cfg, index, device):
    """Learner `index` at its initialisation, which depends on (Solver.seed, index) alone; returns it and its
    backbone arguments."""
    seeding.seed_learner(cfg.Solver.seed, index)
    args = models.backbone_args(cfg.Model, cfg.Data.img_size)
    return models.place(models.build(args), device), args


def resume(index, cfg, device, path, capture, log):
    """Learner `index` (new_learner), its optimizer, its backbone arguments and its checkpoint (None for a new
    learner), restored from the checkpoint when there is one."""
    learner, args = new_learner(cfg, index, device)
    optimizer = adam(learner, cfg.Solver, device, capture=capture)
    if not path.exists():
        return learner, optimizer, args, None
    state = checkpoint.load(path, cfg)
    learner.load_state_dict(state["model"])
    load_optimizer_state(optimizer, state["optimizer"])
    torch.set_rng_state(state["rng"])
    if 0 < state["epoch"] < cfg.Solver.num_epoch:
        log.info(f"learner {index}: resuming at epoch {state['epoch']}")
    return learner, optimizer, args, state


def train_learner(index, seniors, images, cfg, device, capture, run_dir, log, on_trained=None):
    """Train learner `index` (or resume or skip it), then finish it (batchnorm.finish_learner); returns it.
    on_trained(index, learner) sees it as its last epoch left it, before the finish."""
    path, solver = checkpoint.learner_path(run_dir, index), cfg.Solver
    learner, optimizer, args, state = resume(index, cfg, device, path, capture, log)
    start = state["epoch"] if state else 0
    if state and checkpoint.finished(state, cfg):
        log.info(f"learner {index}: finished earlier ({state['epoch']} epochs), skipping")
        return learner
    steps = len(images) // solver.bs
    if steps == 0:
        raise UserError(f"only {len(images)} training images, fewer than one batch (Solver.bs={solver.bs})")

    def save(epoch, **finish):
        checkpoint.save({"learner": index, "epoch": epoch, "backbone": args, "config": cfg.to_dict(),
                         "model": learner.state_dict(), "optimizer": optimizer.state_dict(),
                         "rng": torch.get_rng_state(), "report": None, **finish}, path)

    step = make_step(learner, optimizer, seniors, images, cfg)
    learner.train()
    step_warning = None
    if capture and start < solver.num_epoch:
        checked = [batch.to(device) for batch in first_batches(len(images), solver.bs, solver.seed, index,
                                                               range(start, solver.num_epoch), cuda_graph.CHECK_STEPS)]
        step, step_warning = cuda_graph.capture_step(step, learner, optimizer, checked, images[checked[0]],
                                                     log=log.info)
    probe, every = feature_shape.probe_of(images, solver.seed), feature_shape.probe_every(len(images))
    last_save = time.monotonic()
    bar = tqdm(range(start + 1, solver.num_epoch + 1), desc=f"learner {index}", initial=start,
               total=solver.num_epoch, disable=not log.echo)
    for epoch in bar:  # counted from 1; the last incomplete batch is dropped
        began = time.perf_counter()
        order, totals = epoch_order(len(images), solver.seed, index, epoch - 1).to(device), EpochTotals()
        for i in range(steps):
            totals.add(step(order[i * solver.bs:(i + 1) * solver.bs]), i)
        values = totals.means(steps)
        if not all(math.isfinite(value) for value in values.values()):
            raise not_finite(f"learner {index}, epoch {epoch}", totals.first_not_finite(), path)
        values.update(lr=optimizer.param_groups[0]["lr"], epoch_s=time.perf_counter() - began)
        if feature_shape.looks_at_probe(epoch, solver.num_epoch, every):
            values.update(feature_shape.on_probe(learner, probe))
        log.scalars(f"learner{index}", values, epoch)
        bar.set_postfix(loss=f"{values['loss']:.4f}")
        if epoch == solver.num_epoch:
            log.info(f"learner {index}: trained {solver.num_epoch} epochs, final loss {values['loss']:.5f}")
        elif time.monotonic() - last_save >= cfg.Exp.checkpoint_every_s or stop.requested():
            save(epoch)
            last_save = time.monotonic()
            stop.check(f"learner {index} saved after epoch {epoch} of {solver.num_epoch} in {path}")
    if on_trained:
        on_trained(index, learner)
    # Finished before the final checkpoint, so that a learner found finished is complete.
    report = batchnorm.finish_learner(index, learner, images, probe, cfg, log)
    save(solver.num_epoch, report=report,
         training_warnings=[step_warning] if step_warning else (state or {}).get("training_warnings", []))
    return learner


def make_step(learner, optimizer, seniors, images, cfg):
    """step(batch): train_step on images[batch], against the seniors' features of those images."""
    # The seniors are frozen and in eval mode, and there is no augmentation: their features of an image never change.
    senior_features = [features_of(senior, images) for senior in seniors] if cfg.Exp.cache_seniors else None

    def step(batch):
        x = images[batch]
        on_x = ([features[batch] for features in senior_features] if senior_features is not None
                else [features_of(senior, x) for senior in seniors])
        return train_step(learner, optimizer, x, on_x, cfg.Solver.Lambda)
    return step


def captures(cfg, device) -> bool:
    """Whether the training step is captured as a CUDA graph (Exp.cuda_graph, on CUDA only); decided once per run."""
    return cfg.Exp.cuda_graph and device.type == "cuda"


def train(cfg, device, echo=True, up_to=None, training=None, on_trained=None):
    """Train (or resume, or skip) the learners of the run `cfg` describes; returns its run folder.

    echo=False writes the log to the run folder only (no stdout, no progress bar), as the grid runner wants.
    up_to: train learners 0 .. up_to - 1 only (default all Model.num_learners); the normal reference is made when
    all are there. training: the run's datasets.medad.training_set, when the caller has it already.
    on_trained(index, learner): called with each learner trained here as its last epoch left it, before its finish.
    """
    training = training_set(cfg) if training is None else training
    split, up_to = training.split, cfg.Model.num_learners if up_to is None else up_to
    capture = captures(cfg, device)
    run_dir = make_run_dir(cfg.run_dir)
    with runlock.hold(run_dir), stop.deferred():  # SIGTERM or SIGUSR1: stop at the end of the epoch (utils/run/stop.py)
        if checkpoint.imported_from(run_dir):  # weights alone: nothing to resume, and juniors here would mix two codes
            raise UserError(f"run folder {run_dir} holds learners imported from the published release, without "
                            "optimizer or RNG state: train.py cannot resume or extend it; score it with eval.py, or "
                            "train into another Exp.out_dir")
        prepare_run(cfg, run_dir)
        log = RunLog(run_dir, "train", echo=echo)
        try:
            log.info(f"run folder {run_dir}; device {device}; {cfg.Model.num_learners} x {cfg.Model.network} on "
                     f"{cfg.Data.dataset} ({len(split.train)} normal training images)")
            log.info(f"split: {describe(split.lists)}")
            if training.held_out:
                log.info(f"holding out {len(training.held_out)} of {len(split.train)} normal training images as the "
                         f"normal reference (Data.holdout={cfg.Data.holdout}); training on {len(training.files)}")
            images = to_model_input(training.images.to(device))
            seniors = []
            for index in range(up_to):
                learner = train_learner(index, seniors, images, cfg, device, capture, run_dir, log, on_trained)
                seniors.append(learner.eval().requires_grad_(False))  # frozen
            if up_to == cfg.Model.num_learners:
                ensure_reference(run_dir, cfg, seniors, device, log, training.reference)
        finally:
            log.close()
    return run_dir


@cli
def main(argv=None):
    args = parse_args(argv)
    cfg, device = setup(args.config, args.overrides)
    if cfg.Exp.share_learners:  # the grid runner shares learners between its cells; one run has none to share with
        raise UserError(f"Exp.share_learners={cfg.Exp.share_learners} shares learners between the cells of a grid, "
                        "which train.py alone would ignore: run the grid with python sweep.py --grid GRID_FILE "
                        "(docs/grids.md), or leave the setting out")
    train(cfg, device)
    print(f"done; evaluate with: python eval.py --config {args.config} {' '.join(args.overrides)}".rstrip())


if __name__ == "__main__":
    main()
