"""Train D2UE's ensemble: K learners one after another, each junior repelled from its frozen seniors (RAR).

    python train.py --config cfgs/RSNA_AE.yaml [Section.key=value ...]

Rerunning the same command resumes: finished learners are skipped and an interrupted learner continues from its
last checkpoint. At the end the run's normal reference is made (utils/method/reference.py). SIGTERM or SIGUSR1 (pre-emption) stops the run at the end of the current epoch with a checkpoint.
One command at a time works in a run folder; a second is refused. The test set is never touched here.
"""
import argparse
import math
import time

import torch
from tqdm import tqdm

import models
from datasets.benchmark import describe
from datasets.medad import dataset_dir, hold_out, load_images, read_split, reference_images
from models import to_model_input
from utils import seeding
from utils.atomic import remove_leftovers
from utils.errors import UserError, cli
from utils.fingerprint import fingerprint
from utils.grid import sharing
from utils.method import batchnorm, feature_shape, perturb
from utils.method.cka import GRADIENT_SIMILARITIES, repulsion
from utils.method.ensemble import features_of, input_gradients_of
from utils.method.feature_shape import participation_ratio
from utils.method.reference import ensure as ensure_reference
from utils.method.scores import input_gradient
from utils.run import checkpoint, config, fast, runlock, stop
from utils.run.fast import adam, load_optimizer_state
from utils.run.runtime import RunLog, make_run_dir, setup


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file in cfgs/")
    parser.add_argument("overrides", nargs="*", help="Section.key=value, e.g. Solver.num_epoch=30")
    return parser.parse_args(argv)


def prepare_run(cfg, run_dir):
    """Refuse a run folder that holds another experiment, store the resolved config, and remove the temporary
    files a killed writer left (only the holder of the folder's lock writes in it)."""
    stored = run_dir / "config.yaml"
    if stored.exists():
        checkpoint.check_same_experiment(config.load(stored).to_dict(), cfg.to_dict(), f"run folder {run_dir}")
    config.save(cfg, stored)
    remove_leftovers(run_dir)


def training_loss(learner, x, senior_terms, Lambda, kind="linear_cka", spread=0.0, x_repel=None):
    """The backbone's own loss plus, for a junior, Lambda x its mean similarity (Model.repulsion; linear CKA as
    published) to its seniors' tapped features, or to their input gradients (GRADIENT_SIMILARITIES), and
    `spread` / the participation ratio of its features (Solver.spread, anti-collapse). With x_repel (Model.repel_on
    =pasted) the similarity is measured on those images, through a second forward pass, and senior_terms must be the
    seniors' on them too; the reconstruction loss and `spread` stay on x."""
    by_gradient = senior_terms and kind in GRADIENT_SIMILARITIES
    if by_gradient:
        x = x.detach().requires_grad_(True)
        x_repel = None if x_repel is None else x_repel.detach().requires_grad_(True)
    out = learner(x)
    loss, terms = learner.loss(out, x)
    if senior_terms:
        at, out_at = (x, out) if x_repel is None else (x_repel, learner(x_repel))
        junior = input_gradient(learner, out_at, at, create_graph=True) if by_gradient else out_at["features"]
        mean_similarity, per_senior = repulsion(junior, senior_terms, kind)
        loss = loss + Lambda * mean_similarity
        terms = {**terms, "repulsion": mean_similarity, **{f"cka_senior{j}": c for j, c in enumerate(per_senior)}}
        if spread:
            collapse = 1 / participation_ratio(out["features"])  # 1 for rank 1, 1/p for isotropic features
            loss = loss + spread * collapse
            terms["collapse"] = collapse
    return loss, {"loss": loss, **terms}


def epoch_order(n, seed, index, epoch):
    """The shuffle of one epoch, a function of (seed, learner, epoch) alone so that a resumed run repeats it."""
    return torch.randperm(n, generator=seeding.generator(seed, index, "shuffle", epoch))


def new_learner(cfg, index, device):
    """Learner `index` at its initialisation, which depends on (Solver.seed, index) alone; returns it and its
    backbone arguments."""
    seeding.seed_learner(cfg.Solver.seed, index)
    args = models.backbone_args(cfg.Model, cfg.Data.img_size)
    return models.place(models.build(args), device), args


def resume(index, cfg, device, path, log):
    """Learner `index`, its optimizer and its checkpoint (None for a new learner), restored from the checkpoint
    when there is one."""
    learner, args = new_learner(cfg, index, device)
    optimizer = adam(learner, cfg.Solver, device, capture=captures(cfg, device))
    if not path.exists():
        return learner, args, optimizer, None
    state = checkpoint.load(path, cfg)
    learner.load_state_dict(state["model"])
    load_optimizer_state(optimizer, state["optimizer"])
    torch.set_rng_state(state["rng"])
    if 0 < state["epoch"] and not checkpoint.finished(state, cfg):
        log.info(f"learner {index}: resuming at epoch {state['epoch']}")
    return learner, args, optimizer, state


def captures(cfg, device) -> bool:
    """Whether the training step is captured as a CUDA graph (utils/run/fast.py)."""
    return cfg.Exp.fast and device.type == "cuda"


def train_step(learner, optimizer, x, senior_terms, cfg, x_repel=None) -> dict:
    """One update of the learner on the batch x: forward and loss, backward, Adam's step. Returns the loss terms,
    detached; train_one_epoch checks that they are finite (a check here would wait for the GPU at every step)."""
    optimizer.zero_grad(set_to_none=True)
    loss, terms = training_loss(learner, x, senior_terms, cfg.Solver.Lambda, cfg.Model.repulsion, cfg.Solver.spread,
                                x_repel)
    loss.backward()
    optimizer.step()
    return {name: value.detach() for name, value in terms.items()}


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


def train_one_epoch(step, order, batch_size) -> EpochTotals:
    """One pass over the training set in the given order (the last incomplete batch dropped): each step's loss
    terms summed, and where each first went non-finite."""
    totals = EpochTotals()
    for i in range(len(order) // batch_size):
        totals.add(step(order[i * batch_size:(i + 1) * batch_size]), i)
    return totals


def train_learner(index, seniors, images, cfg, device, run_dir, log):
    """Train learner `index` (or resume or skip it); returns it."""
    path, solver = checkpoint.learner_path(run_dir, index), cfg.Solver
    learner, args, optimizer, state = resume(index, cfg, device, path, log)
    if state and checkpoint.finished(state, cfg):
        if batchnorm.finished_as(state["report"], cfg):
            log.info(f"learner {index}: finished earlier ({state['epoch']} epochs), skipping")
            return learner
        return finish_again(index, learner, state, images, cfg, path, log)
    start = state["epoch"] if state else 0
    steps = len(images) // solver.bs
    if steps == 0:
        raise UserError(f"only {len(images)} training images, fewer than one batch (Solver.bs={solver.bs})")

    def save(epoch, report=None, **finish):
        checkpoint.save({"learner": index, "epoch": epoch, "backbone": args, "config": cfg.to_dict(),
                         "model": learner.state_dict(), "optimizer": optimizer.state_dict(),
                         "rng": torch.get_rng_state(), "report": report, **finish}, path)

    learner.train()
    # Model.repel_on=pasted: a junior is compared with its seniors on the run's one pasted copy of the training set;
    # with Lambda 0 it is a plain ensemble, exactly.
    pasted = seniors and solver.Lambda and cfg.Model.repel_on == "pasted"
    repel = perturb.self_pasted(images, solver.seed) if pasted else None
    terms_of = input_gradients_of if cfg.Model.repulsion in GRADIENT_SIMILARITIES else features_of
    seniors_on = fast.senior_terms(seniors, images if repel is None else repel, terms_of, cache=cfg.Exp.fast)

    def step(batch):
        return train_step(learner, optimizer, images[batch], seniors_on(batch), cfg,
                          None if repel is None else repel[batch])

    step, step_warning = fast.capture_step(step, learner, optimizer, solver.bs, capture=captures(cfg, device),
                                           log=log.info)
    probe, every = feature_shape.probe_of(images, solver.seed), feature_shape.probe_every(len(images))
    last_save = time.monotonic()
    bar = tqdm(range(start + 1, solver.num_epoch + 1), desc=f"learner {index}", initial=start,
               total=solver.num_epoch, disable=not log.echo)
    for epoch in bar:  # counted from 1
        began = time.perf_counter()
        totals = train_one_epoch(step, epoch_order(len(images), solver.seed, index, epoch - 1).to(device), solver.bs)
        values = totals.means(steps)
        if not all(math.isfinite(value) for value in values.values()):
            raise not_finite(f"learner {index}, epoch {epoch}", totals.first_not_finite(), path)
        values.update(lr=optimizer.param_groups[0]["lr"], epoch_s=time.perf_counter() - began)
        if feature_shape.looks_at_probe(epoch, solver.num_epoch, every):
            values.update(feature_shape.on_probe(learner, probe))
        log.scalars(f"learner{index}", values, epoch)
        bar.set_postfix(loss=f"{values['loss']:.4f}")
        if epoch == solver.num_epoch:  # before the final checkpoint: a learner found finished is complete
            trained = batchnorm.buffers_of(learner)  # what finish_again starts from in a run that takes a copy
            report = batchnorm.finish_learner(index, learner, images, probe, cfg, log)
            training_warnings = [step_warning] if step_warning else []
            report["warnings"] += training_warnings
            save(epoch, report, trained_buffers=trained, training_warnings=training_warnings)
        elif time.monotonic() - last_save >= cfg.Exp.checkpoint_every_s or stop.requested():
            save(epoch)
            last_save = time.monotonic()
        stop.check(f"learner {index} saved after epoch {epoch} of {solver.num_epoch} in {path}")
    log.info(f"learner {index}: trained {solver.num_epoch} epochs, final loss {values['loss']:.5f}")
    return learner


def finish_again(index, learner, state, images, cfg, path, log):
    """A learner taken from Exp.share_learners that was finished under the other Solver.precise_bn (the setting acts
    only after the last epoch, so the two share their training): its BatchNorm statistics as training left them, then
    this run's finish, so that it holds exactly what training it here would have given. Returns it."""
    batchnorm.load_buffers(learner, state["trained_buffers"])
    log.info(f"learner {index}: trained in {state['report'].get('shared_from', 'another run')}, finished again "
             f"for Solver.precise_bn={cfg.Solver.precise_bn}")
    report = batchnorm.finish_learner(index, learner, images, feature_shape.probe_of(images, cfg.Solver.seed), cfg,
                                      log)
    report["warnings"] += state["training_warnings"]
    if "shared_from" in state["report"]:
        report["shared_from"] = state["report"]["shared_from"]
    checkpoint.save({**state, "model": learner.state_dict(), "report": report}, path)
    return learner


def train(cfg, device, echo=True, wait_for_shared=True):
    """Train (or resume, or skip) every learner of the run `cfg` describes; returns its run folder.

    echo=False writes the log to the run folder only (no stdout, no progress bar), as the grid runner wants.
    wait_for_shared=False: raise sharing.Busy instead of waiting when another run is training a learner this one
    would take from Exp.share_learners (the learners finished so far stay, and the next call resumes).
    """
    split = read_split(dataset_dir(cfg.Data.root, cfg.Data.dataset))
    files, reference = hold_out(split.train, cfg.Data.holdout, cfg.Solver.seed, cfg.Solver.bs)
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
            if reference:
                log.info(f"holding out {len(reference)} of {len(split.train)} normal training images as the normal "
                         f"reference (Data.holdout={cfg.Data.holdout}); training on {len(files)}")
            raw = load_images(split.directory, files, cfg.Data.img_size, cfg.Exp.workers or None)
            training_images = fingerprint([raw]) if cfg.Exp.share_learners else None
            images = to_model_input(raw.to(device))
            seniors = []
            for index in range(cfg.Model.num_learners):
                with sharing.take(cfg, index, training_images, seniors, run_dir, log, wait_for_shared) as shared:
                    learner = train_learner(index, seniors, images, cfg, device, run_dir, log)
                    sharing.leave(shared, run_dir)
                seniors.append(learner.eval().requires_grad_(False))  # frozen
            ensure_reference(run_dir, cfg, seniors, device, log, lambda: reference_images(split, cfg, raw))
        finally:
            log.close()
    return run_dir


@cli
def main(argv=None):
    args = parse_args(argv)
    cfg, device = setup(args.config, args.overrides)
    train(cfg, device)
    print(f"done; evaluate with: python eval.py --config {args.config} {' '.join(args.overrides)}".rstrip())


if __name__ == "__main__":
    main()
