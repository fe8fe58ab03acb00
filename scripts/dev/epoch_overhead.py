"""What an epoch of train.py spends outside its training steps (the feature probe, logging, the loss read-out),
for every shipped config, on synthetic images of each data set's training-set size.

    python scripts/dev/epoch_overhead.py [--device cpu] [--configs cfgs/RSNA_AE.yaml ...] [--epochs E]

Trains learner 0 and one junior of each config for E epochs (default: twice the probe's interval, at least 4) with
train.train_learner itself, times its steps (from the making of an epoch's EpochTotals to the reading of its means),
its looks at the probe and the whole epoch loop, and prints one line per config and learner, then one JSON line: the
share of the measured epochs spent outside the steps, the same share projected on the config's whole run (its
num_epoch, the probe looked at as train.py does), and one checkpoint's write time (the loop writes one at most every
Exp.checkpoint_every_s, 60 s by default).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

import train  # noqa: E402
from utils.errors import ArgumentParser, cli  # noqa: E402
from utils.method import batchnorm, feature_shape  # noqa: E402
from utils.run import checkpoint, config  # noqa: E402
from utils.run.runtime import RunLog, pick_device  # noqa: E402

TRAIN_SIZES = {"rsna": 3851, "vin": 4000, "brain": 1000, "lag": 1500, "demo": 800}  # normal training images


class Clock:
    """Seconds in the steps and in the probe, and the span of the epoch loop, of one train_learner call."""

    def __init__(self, monkeypatch_target):
        self.steps, self.probe, self.probes, self.first, self.last = 0.0, 0.0, 0, None, None
        self.inner = monkeypatch_target.EpochTotals

    def on_probe(self, *args):
        began = time.perf_counter()
        shape = on_probe(*args)
        self.probe += time.perf_counter() - began
        self.probes += 1
        return shape

    def totals(self):
        """train.EpochTotals, timed from its making, before an epoch's first step, to the reading of its means after
        the last (the steps are done when their totals can be read)."""
        clock = self

        class Timed(self.inner):
            def __init__(self):
                super().__init__()
                self.began = time.perf_counter()
                clock.first = clock.first or self.began

            def means(self, steps):
                values = super().means(steps)
                clock.steps += time.perf_counter() - self.began
                return values

        return Timed

    def finish_learner(self, *args, **kwargs):
        self.last = time.perf_counter()
        return finish(*args, **kwargs)


finish, on_probe = batchnorm.finish_learner, feature_shape.on_probe


def full_run_share(clock, epochs, num_epoch, every) -> float:
    """The share outside the steps over a whole run of num_epoch epochs, from this run's per-epoch figures."""
    probes = sum(feature_shape.looks_at_probe(epoch, num_epoch, every) for epoch in range(1, num_epoch + 1))
    step, probe = clock.steps / epochs, clock.probe / clock.probes
    other = (clock.last - clock.first - clock.steps - clock.probe) / epochs
    outside = probes * probe + num_epoch * other
    return outside / (num_epoch * step + outside)


def measure(cfg_path, device, epochs=None):
    cfg = config.load(cfg_path, ["Model.num_learners=2", "Exp.checkpoint_every_s=1e9"])
    full_epochs = cfg.Solver.num_epoch
    n_train = TRAIN_SIZES[cfg.Data.dataset]
    epochs = epochs or max(4, 2 * feature_shape.probe_every(n_train))
    cfg = config.load(cfg_path, ["Model.num_learners=2", "Exp.checkpoint_every_s=1e9", f"Solver.num_epoch={epochs}"])
    images = torch.rand(n_train, 1, cfg.Data.img_size, cfg.Data.img_size, generator=torch.Generator().manual_seed(0))
    images = (images * 2 - 1).to(device)
    lines, seniors = [], []
    with tempfile.TemporaryDirectory() as run_dir:
        log = RunLog(run_dir, "train", echo=False)
        for index in range(2):
            clock = Clock(train)
            train.EpochTotals, batchnorm.finish_learner = clock.totals(), clock.finish_learner
            feature_shape.on_probe = clock.on_probe
            try:
                learner = train.train_learner(index, seniors, images, cfg, device, device.type == "cuda",
                                              Path(run_dir), log)
            finally:
                train.EpochTotals, batchnorm.finish_learner = clock.inner, finish
                feature_shape.on_probe = on_probe
            loop, every = clock.last - clock.first, feature_shape.probe_every(n_train)
            lines.append({"config": Path(cfg_path).name, "learner": index, "n_train": n_train, "epochs": epochs,
                          "probe_every": every, "loop_s": round(loop, 3), "steps_s": round(clock.steps, 3),
                          "probe_s": round(clock.probe / clock.probes, 4),
                          "outside_share": round(1 - clock.steps / loop, 4), "full_run_epochs": full_epochs,
                          "full_run_outside_share": round(full_run_share(clock, epochs, full_epochs, every), 4)})
            seniors.append(learner.eval().requires_grad_(False))
        began = time.perf_counter()
        checkpoint.save({"model": seniors[-1].state_dict()}, Path(run_dir) / "timing.pt")
        lines[-1]["checkpoint_s"] = round(time.perf_counter() - began, 4)
        log.close()
    return lines


@cli
def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--configs", nargs="*", default=sorted(str(p) for p in Path("cfgs").glob("*.yaml")))
    parser.add_argument("--epochs", type=int, help="epochs per learner (default: twice the probe's interval, >= 4)")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    results = []
    for cfg_path in args.configs:
        for line in measure(cfg_path, device, args.epochs):
            print(f"{line['config']} learner {line['learner']}: {line['epochs']} epochs of {line['n_train']} images, "
                  f"probe every {line['probe_every']}: {line['outside_share']:.1%} of the epoch loop outside the "
                  f"steps ({line['loop_s']} s loop, {line['steps_s']} s steps, {line['probe_s']} s per probe); over "
                  f"{line['full_run_epochs']} epochs: {line['full_run_outside_share']:.1%}", flush=True)
            results.append(line)
    worst = max(results, key=lambda line: line["full_run_outside_share"])
    print(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "worst": worst, "runs": results}))


if __name__ == "__main__":
    main()
