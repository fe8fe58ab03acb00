"""Train D2UE's ensemble: K learners one after another, each junior repelled from its frozen seniors (RAR).

    python train.py --config cfgs/RSNA_AE.yaml [Section.key=value ...]

Rerunning the same command resumes: finished learners are skipped and an interrupted learner continues from its
last checkpoint. The test set is never touched here.
"""
import argparse
import math
import time

import torch
from tqdm import tqdm

import models
from datasets.benchmark import describe
from datasets.medad import dataset_dir, load_images, read_split, to_model_input
from utils import checkpoint, config
from utils.batchnorm import eval_and_train_errors, eval_mode_warning, recompute_bn_stats
from utils.cka import repulsion, spectrum
from utils.ensemble import features_of
from utils.errors import UserError, cli
from utils.fast import adam, load_optimizer_state, make_step
from utils.runtime import RunLog, make_run_dir, setup

PROBE_SIZE = 256  # training images on which each learner's feature shape and BatchNorm health are watched


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file in cfgs/")
    parser.add_argument("overrides", nargs="*", help="Section.key=value, e.g. Solver.num_epoch=30")
    return parser.parse_args(argv)


def prepare_run(cfg):
    """Create the run folder, refuse one that holds another experiment, store the resolved config."""
    run_dir = make_run_dir(cfg.run_dir)
    stored = run_dir / "config.yaml"
    if stored.exists():
        checkpoint.check_same_experiment(config.load(stored).to_dict(), cfg.to_dict(), f"run folder {run_dir}")
    config.save(cfg, stored)
    return run_dir


def training_loss(learner, x, senior_features, Lambda, kind="linear_cka"):
    """The backbone's own loss plus, for a junior, Lambda x its mean similarity (Model.repulsion; linear CKA as
    published) to its seniors."""
    out = learner(x)
    loss, terms = learner.loss(out, x)
    if senior_features:
        mean_similarity, per_senior = repulsion(out["features"], senior_features, kind)
        loss = loss + Lambda * mean_similarity
        terms = {**terms, "repulsion": mean_similarity, **{f"cka_senior{j}": c for j, c in enumerate(per_senior)}}
    return loss, {"loss": loss, **terms}


def probe_of(images, seed, size=PROBE_SIZE):
    """A fixed slice of the training images on which a learner's features and its eval- against train-mode
    reconstruction are watched (D2UE trains on every normal image, so there is no held-out one to use)."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:size]
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
        recompute_bn_stats(learner, images, cfg.Solver.bs, seed=cfg.Solver.seed + index)
    report["eval_mse"], report["train_mse"] = eval_and_train_errors(learner, probe, cfg.Solver.bs)
    report["warning"] = eval_mode_warning(f"learner {index}", report["eval_mse"], report["train_mse"])
    log.info(f"learner {index}: reconstruction MSE on {len(probe)} training images {report['eval_mse']:.5f} in eval "
             f"mode, {report['train_mse']:.5f} in train mode"
             + (f" (eval mode {report['eval_mse_before_precise_bn']:.5f} before precise BatchNorm statistics)"
                if cfg.Solver.precise_bn else ""))
    if report["warning"]:
        log.info(f"warning: {report['warning']}")
    return report


def epoch_order(n, seed, index, epoch):
    """The shuffle of one epoch, a function of (seed, learner, epoch) alone so that a resumed run repeats it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index * 10_007 + epoch)
    return torch.randperm(n, generator=generator)


def train_learner(index, seniors, images, cfg, device, run_dir, log):
    """Train learner `index` (or resume or skip it); returns it."""
    path = checkpoint.learner_path(run_dir, index)
    solver = cfg.Solver
    torch.manual_seed(solver.seed + index)
    args = models.backbone_args(cfg.Model, cfg.Data.img_size)
    learner = models.place(models.build(args), device)
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
    senior_cache = [features_of(senior, images) for senior in seniors] if cfg.Exp.fast else None

    def batch_loss(batch):
        """The loss on images[batch]; the seniors' features come from the cache or from a forward pass now."""
        x = images[batch]
        if senior_cache is None:
            with torch.no_grad():
                senior_features = [senior(x)["features"] for senior in seniors]
        else:
            senior_features = [cache[batch] for cache in senior_cache]
        return training_loss(learner, x, senior_features, solver.Lambda, cfg.Model.repulsion)

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
        totals = {}
        for i in range(steps):
            terms = step(order[i * solver.bs:(i + 1) * solver.bs])
            for name, value in terms.items():  # summed on the device: no host sync inside the epoch
                totals[name] = totals.get(name, 0) + value
        values = dict(zip(totals, (torch.stack(list(totals.values())) / steps).tolist()))
        if not all(math.isfinite(v) for v in values.values()):
            raise UserError(f"learner {index}, epoch {epoch + 1}: loss is not finite ({values['loss']}); "
                            f"the last good checkpoint is kept at {path}; try a lower Solver.lr")
        values.update(lr=optimizer.param_groups[0]["lr"], epoch_s=time.perf_counter() - began,
                      **feature_shape(learner, probe))
        log.scalars(f"learner{index}", values, epoch + 1)
        bar.set_postfix(loss=f"{values['loss']:.4f}")
        if epoch + 1 == solver.num_epoch:  # before the final checkpoint: a learner found finished is complete
            save(epoch + 1, finish_learner(index, learner, images, probe, cfg, log))
        elif time.monotonic() - last_save >= cfg.Exp.checkpoint_every_s:
            save(epoch + 1)
            last_save = time.monotonic()
    log.info(f"learner {index}: trained {solver.num_epoch} epochs, final loss {values['loss']:.5f}")
    return learner


def train(cfg, device, echo=True):
    """Train (or resume, or skip) every learner of the run `cfg` describes; returns its run folder.

    echo=False writes the log to the run folder only (no stdout, no progress bar), as the grid runner wants.
    """
    split = read_split(dataset_dir(cfg.Data.root, cfg.Data.dataset))
    run_dir = prepare_run(cfg)
    log = RunLog(run_dir, "train", echo=echo)
    try:
        log.info(f"run folder {run_dir}; device {device}; {cfg.Model.num_learners} x {cfg.Model.network} on "
                 f"{cfg.Data.dataset} ({len(split.train)} normal training images)")
        log.info(f"split: {describe(split.lists)}")
        images = to_model_input(load_images(split.directory, split.train, cfg.Data.img_size,
                                            cfg.Exp.workers or None).to(device))
        seniors = []
        for index in range(cfg.Model.num_learners):
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
