"""Train D2UE's ensemble: K learners one after another, each junior repelled from its frozen seniors (RAR).

    python train.py --config cfgs/RSNA_AE.yaml [Section.key=value ...]

Rerunning the same command resumes: finished learners are skipped and an interrupted learner continues from its
last checkpoint. SIGTERM or SIGUSR1 (pre-emption) stops the run at the end of the current epoch with a checkpoint.
One command at a time works in a run folder; a second is refused. The test set is never touched here.
"""
import argparse
import fcntl
import hashlib
import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

import models
from datasets.benchmark import describe
from datasets.medad import dataset_dir, load_images, read_split, to_model_input
from utils import checkpoint, config, runlock, seeding, stop
from utils.batchnorm import eval_and_train_errors, eval_mode_warning, recompute_bn_stats
from utils.cka import GRADIENT_SIMILARITIES, participation_ratio, repulsion, spectrum
from utils.ensemble import features_of, input_gradients_of
from utils.scores import input_gradient
from utils.errors import UserError, cli
from utils.fast import adam, load_optimizer_state, make_step
from utils.runtime import RunLog, make_run_dir, setup

PROBE_SIZE = 256  # training images on which each learner's feature shape and BatchNorm health are watched


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
    for stale in run_dir.glob(".*.tmp"):
        stale.unlink()


def training_loss(learner, x, senior_terms, Lambda, kind="linear_cka", spread=0.0):
    """The backbone's own loss plus, for a junior, Lambda x its mean similarity (Model.repulsion; linear CKA as
    published) to its seniors' tapped features, or to their input gradients (GRADIENT_SIMILARITIES), and
    `spread` / the participation ratio of its features (Solver.spread, anti-collapse)."""
    by_gradient = senior_terms and kind in GRADIENT_SIMILARITIES
    if by_gradient:
        x = x.detach().requires_grad_(True)
    out = learner(x)
    loss, terms = learner.loss(out, x)
    if senior_terms:
        junior = input_gradient(learner, out, x, create_graph=True) if by_gradient else out["features"]
        mean_similarity, per_senior = repulsion(junior, senior_terms, kind)
        loss = loss + Lambda * mean_similarity
        terms = {**terms, "repulsion": mean_similarity, **{f"cka_senior{j}": c for j, c in enumerate(per_senior)}}
        if spread:
            collapse = 1 / participation_ratio(out["features"])  # 1 for rank 1, 1/p for isotropic features
            loss = loss + spread * collapse
            terms["collapse"] = collapse
    return loss, {"loss": loss, **terms}


def probe_of(images, seed, size=PROBE_SIZE):
    """A fixed slice of the training images on which a learner's features and its eval- against train-mode
    reconstruction are watched (D2UE trains on every normal image, so there is no held-out one to use)."""
    order = torch.randperm(len(images), generator=seeding.generator(seed, 0, "probe"))[:size]
    return images[order.sort().values.to(images.device)]


@torch.no_grad()
def feature_shape(learner, probe) -> dict:
    """Effective rank and top-direction share of the learner's tapped features on the probe, in eval mode (the
    mode the scores use): a junior that piles its variance into one direction shows here."""
    was_training = learner.training
    learner.eval()
    rank, share = spectrum(learner(probe)["features"])
    learner.train(was_training)
    return {"effective_rank": rank.item(), "top_share": share.item()}


def finish_learner(index, learner, images, probe, cfg, log) -> dict:
    """After the last epoch: precise BatchNorm statistics if asked, then eval- against train-mode reconstruction
    error on the probe, with a warning line when eval mode is much worse. Returns the report (kept in the
    checkpoint; eval.py copies it into results.json)."""
    report = {}
    if cfg.Solver.precise_bn:
        report["eval_mse_before_precise_bn"] = eval_and_train_errors(learner, probe, cfg.Solver.bs)[0]
        recompute_bn_stats(learner, images, cfg.Solver.bs,
                           seed=seeding.stream_seed(cfg.Solver.seed, index, "precise_bn"))
    report["eval_mse"], report["train_mse"] = eval_and_train_errors(learner, probe, cfg.Solver.bs)
    report["warning"] = eval_mode_warning(f"learner {index}", report["eval_mse"], report["train_mse"])
    log.info(f"learner {index}: reconstruction MSE on {len(probe)} training images {report['eval_mse']:.5f} in eval "
             f"mode, {report['train_mse']:.5f} in train mode"
             + (f" (eval mode {report['eval_mse_before_precise_bn']:.5f} before precise BatchNorm statistics)"
                if cfg.Solver.precise_bn else ""))
    if report["warning"]:
        log.info(f"warning: {report['warning']}")
    return report


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


def epoch_order(n, seed, index, epoch):
    """The shuffle of one epoch, a function of (seed, learner, epoch) alone so that a resumed run repeats it."""
    return torch.randperm(n, generator=seeding.generator(seed, index, "shuffle", epoch))


def new_learner(cfg, index, device):
    """Learner `index` at its initialisation, which depends on (Solver.seed, index) alone; returns it and its
    backbone arguments."""
    seeding.seed_learner(cfg.Solver.seed, index)
    args = models.backbone_args(cfg.Model, cfg.Data.img_size)
    return models.place(models.build(args), device), args


def train_learner(index, seniors, images, cfg, device, run_dir, log):
    """Train learner `index` (or resume or skip it); returns it."""
    path = checkpoint.learner_path(run_dir, index)
    solver = cfg.Solver
    learner, args = new_learner(cfg, index, device)
    capture = cfg.Exp.fast and device.type == "cuda"
    optimizer = adam(learner, solver, device, capture)
    start = 0
    if path.exists():
        state = checkpoint.load(path)
        checkpoint.check_same_experiment(state["config"], cfg.to_dict(), f"checkpoint {path}")
        learner.load_state_dict(state["model"])
        load_optimizer_state(optimizer, state["optimizer"])
        torch.set_rng_state(state["rng"])
        start = state["epoch"]
    if start >= solver.num_epoch:
        log.info(f"learner {index}: finished earlier ({start} epochs), skipping")
        return learner
    if start:
        log.info(f"learner {index}: resuming at epoch {start}")

    # Seniors are frozen and in eval mode and there is no augmentation: their features never change, so compute
    # them once for the whole training set instead of at every step.
    senior_terms = input_gradients_of if cfg.Model.repulsion in GRADIENT_SIMILARITIES else features_of
    senior_cache = [senior_terms(senior, images) for senior in seniors] if cfg.Exp.fast else None

    def batch_loss(batch):
        """The loss on images[batch]; the seniors' terms come from the cache or are computed now."""
        x = images[batch]
        if senior_cache is None:
            seniors_now = [senior_terms(senior, x) for senior in seniors]
        else:
            seniors_now = [cache[batch] for cache in senior_cache]
        return training_loss(learner, x, seniors_now, solver.Lambda, cfg.Model.repulsion, solver.spread)

    def save(epoch, report=None):
        checkpoint.save({"learner": index, "epoch": epoch, "backbone": args, "config": cfg.to_dict(),
                         "model": learner.state_dict(), "optimizer": optimizer.state_dict(),
                         "rng": torch.get_rng_state(), "report": report}, path)

    learner.train()
    probe = probe_of(images, solver.seed)
    steps = len(images) // solver.bs
    if steps == 0:
        raise UserError(f"only {len(images)} training images, fewer than one batch (Solver.bs={solver.bs})")
    step = make_step(batch_loss, learner, optimizer, solver.bs, capture=capture, log=log.info)  # utils/fast.py
    last_save = time.monotonic()
    bar = tqdm(range(start, solver.num_epoch), desc=f"learner {index}", initial=start, total=solver.num_epoch,
               disable=not log.echo)
    for epoch in bar:
        began = time.perf_counter()
        order = epoch_order(len(images), solver.seed, index, epoch).to(device)
        totals = EpochTotals()
        for i in range(steps):
            totals.add(step(order[i * solver.bs:(i + 1) * solver.bs]), i)
        values = totals.means(steps)
        if not all(math.isfinite(v) for v in values.values()):
            raise not_finite(f"learner {index}, epoch {epoch + 1}", totals.first_not_finite(), path)
        values.update(lr=optimizer.param_groups[0]["lr"], epoch_s=time.perf_counter() - began,
                      **feature_shape(learner, probe))
        log.scalars(f"learner{index}", values, epoch + 1)
        bar.set_postfix(loss=f"{values['loss']:.4f}")
        if epoch + 1 == solver.num_epoch:  # before the final checkpoint: a learner found finished is complete
            save(epoch + 1, finish_learner(index, learner, images, probe, cfg, log))
        elif time.monotonic() - last_save >= cfg.Exp.checkpoint_every_s or stop.requested():
            save(epoch + 1)
            last_save = time.monotonic()
        stop.check(f"learner {index} saved after epoch {epoch + 1} of {solver.num_epoch} in {path}")
    log.info(f"learner {index}: trained {solver.num_epoch} epochs, final loss {values['loss']:.5f}")
    return learner


JUNIOR_ONLY = ("Solver.Lambda", "Solver.spread", "Model.repulsion")  # settings learner 0 never uses


def learner0_key(cfg) -> str:
    """What learner 0 depends on (the experiment's identity but the juniors' settings, and the data's folder) as a
    short hash: runs with the same key train the same learner 0."""
    settings = {key: value for key, value in checkpoint.identity(cfg.to_dict()).items() if key not in JUNIOR_ONLY}
    settings["data"] = str(dataset_dir(cfg.Data.root, cfg.Data.dataset).resolve())
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def finished(path, cfg) -> bool:
    return path.is_file() and checkpoint.load(path)["epoch"] >= cfg.Solver.num_epoch


def shared_learner0(images, cfg, device, run_dir, log):
    """Learner 0 from Exp.share_learner0 when a run with the same learner0_key left it there, else trained here and
    left there. A lock per key makes a run wait while another trains that learner 0."""
    folder = Path(cfg.Exp.share_learner0) / learner0_key(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    shared, own = folder / "learner_0.pt", checkpoint.learner_path(run_dir, 0)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process ends
        if not finished(own, cfg) and finished(shared, cfg):
            state = checkpoint.load(shared)
            log.info(f"learner 0: taken from {shared}, trained in {state['trained_in']} with the same settings "
                     "but the juniors'")
            report = {**(state["report"] or {}), "shared_from": state["trained_in"]}
            checkpoint.save({**state, "config": cfg.to_dict(), "report": report}, own)
        learner = train_learner(0, [], images, cfg, device, run_dir, log)
        if not finished(shared, cfg):
            state = checkpoint.load(own)
            checkpoint.save({**state, "trained_in": str(state["report"].get("shared_from", run_dir))}, shared)
    return learner


def train(cfg, device, echo=True):
    """Train (or resume, or skip) every learner of the run `cfg` describes; returns its run folder.

    echo=False writes the log to the run folder only (no stdout, no progress bar), as the grid runner wants.
    """
    split = read_split(dataset_dir(cfg.Data.root, cfg.Data.dataset))
    run_dir = make_run_dir(cfg.run_dir)
    with runlock.hold(run_dir), stop.deferred():  # SIGTERM or SIGUSR1: stop at the end of the epoch (utils/stop.py)
        prepare_run(cfg, run_dir)
        log = RunLog(run_dir, "train", echo=echo)
        try:
            log.info(f"run folder {run_dir}; device {device}; {cfg.Model.num_learners} x {cfg.Model.network} on "
                     f"{cfg.Data.dataset} ({len(split.train)} normal training images)")
            log.info(f"split: {describe(split.lists)}")
            images = to_model_input(load_images(split.directory, split.train, cfg.Data.img_size,
                                                cfg.Exp.workers or None).to(device))
            seniors = []
            for index in range(cfg.Model.num_learners):
                if index == 0 and cfg.Exp.share_learner0:
                    learner = shared_learner0(images, cfg, device, run_dir, log)
                else:
                    learner = train_learner(index, seniors, images, cfg, device, run_dir, log)
                seniors.append(learner.eval().requires_grad_(False))  # frozen
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
