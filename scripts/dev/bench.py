"""Benchmark the fast path against the naive loop of the published code, on synthetic RSNA-sized data.

    scripts/dev/bench.sh [--device cpu|cuda] [--n-train 3851] [--n-test 2000] [--img-size 64] [--epochs E]
                     [--profile FILE [--profile-epochs 10]]

Fast path = what users run: train.train_learner (training set on the device, cached senior features, a captured
CUDA-graph step on CUDA) and eval.score_dataset (one forward and one backward per learner per batch).
Naive path = the published code's habits, kept here only: a DataLoader over per-sample PIL -> ToTensor ->
Normalize images, the seniors forwarded at every step, and scoring one image at a time (batch 1, one forward and
one backward per learner per image, every score read back to the host). Both paths run the same networks and the
same shuffles, so their losses and scores are compared as well as timed.

Per-epoch times are medians over epochs; full_run_estimate_s adds 250 epochs per learner at that rate, the
one-time setup per learner (senior features, capture, checkpoint) and scoring the test set. The naive path runs
fewer epochs and scores a subset (naive_epochs, naive_score_images). The last line printed is one JSON object.

--profile FILE: after the timings, one more junior (all learners as its seniors) trains for --profile-epochs epochs
under torch.profiler, and FILE gets the operators and kernels that took the most time (self time on the GPU, or on
the CPU without one): where a training epoch's time goes. Its seconds per epoch are in the JSON (profile_s_per_epoch).
"""
import argparse
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import models  # noqa: E402
import train  # noqa: E402
from datasets.prepare.demo import LESIONS, make_image  # noqa: E402
from models import to_model_input  # noqa: E402
from utils import seeding  # noqa: E402
from utils.errors import ArgumentParser, cli  # noqa: E402
from utils.method.dsu import SCORES, image_scores, score_dataset, score_maps  # noqa: E402
from utils.report.metrics import image_metrics  # noqa: E402
from utils.run import config  # noqa: E402
from utils.run.runtime import RunLog, pick_device, set_tf32  # noqa: E402

FULL_EPOCHS = 250  # a published run trains every learner this long


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    parser.add_argument("--n-train", type=int, default=3851)
    parser.add_argument("--n-test", type=int, default=2000, help="half normal, half abnormal")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, help="fast-path epochs per learner (default 2 on CPU, 30 on CUDA)")
    parser.add_argument("--naive-epochs", type=int, help="naive epochs per learner (default 1 on CPU, 3 on CUDA)")
    parser.add_argument("--naive-score-images", type=int,
                        help="test images the naive per-image scorer runs on (default 100 on CPU, 500 on CUDA)")
    parser.add_argument("--naive-workers", type=int, default=0, help="DataLoader workers of the naive path")
    parser.add_argument("--network", default="AE", choices=list(models.MODELS))
    parser.add_argument("--learners", type=int, default=3)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--profile", metavar="FILE", help="write the top operators and kernels of a profiled junior")
    parser.add_argument("--profile-epochs", type=int, default=10, help="epochs of the profiled junior (default 10)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time batched scoring under bfloat16 autocast vs float32; report the AUC change")
    return parser.parse_args(argv)


def make_data(n_train, n_test, img_size, seed=0):
    """uint8 arrays (N, S, S): normal training images, test images (normal first) and test labels."""
    def image(split, index, lesion=None):
        return make_image(np.random.default_rng([seed, split, index]), img_size, lesion)[0]

    n_normal = n_test - n_test // 2
    train_images = np.stack([image(0, i) for i in range(n_train)])
    normal = [image(1, i) for i in range(n_normal)]
    abnormal = [image(2, i, LESIONS[i % len(LESIONS)]) for i in range(n_test - n_normal)]
    labels = np.array([0] * n_normal + [1] * (n_test - n_normal))
    return train_images, np.stack(normal + abnormal), labels


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- the naive path
class NaiveImages(Dataset):
    """One image per item, converted when asked: PIL image -> ToTensor -> Normalize to [-1, 1]."""

    def __init__(self, arrays):
        self.arrays = arrays
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])

    def __len__(self):
        return len(self.arrays)

    def __getitem__(self, index):
        return self.transform(Image.fromarray(self.arrays[index]))


class EpochOrder(Sampler):
    """Shuffles as train.epoch_order does, so the naive and fast paths see the same batches."""

    def __init__(self, n, seed, index):
        self.n, self.seed, self.index, self.epoch = n, seed, index, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(train.epoch_order(self.n, self.seed, self.index, self.epoch).tolist())


def naive_train_step(learner, optimizer, seniors, x, Lambda):
    """One step as the published code does it: the seniors are forwarded on every batch."""
    with torch.no_grad():
        senior_features = [senior(x)["features"] for senior in seniors]
    return train.train_step(learner, optimizer, x, senior_features, Lambda)


def naive_train(index, seniors, train_images, cfg, device, epochs, workers=0):
    """Train one learner the naive way: (learner, seconds per epoch, mean loss per epoch)."""
    solver = cfg.Solver
    seeding.seed_learner(solver.seed, index)
    learner = models.build(models.backbone_args(cfg.Model, cfg.Data.img_size)).to(device).train()
    optimizer = torch.optim.Adam(learner.parameters(), lr=solver.lr, betas=(0.5, 0.999),
                                 weight_decay=solver.weight_decay)
    order = EpochOrder(len(train_images), solver.seed, index)
    loader = DataLoader(NaiveImages(train_images), batch_size=solver.bs, sampler=order, drop_last=True,
                        num_workers=workers)
    seconds, losses = [], []
    for epoch in range(epochs):
        order.epoch = epoch
        began = time.perf_counter()
        total = 0
        for x in loader:
            total = total + naive_train_step(learner, optimizer, seniors, x.to(device), solver.Lambda)["loss"]
        losses.append(total.item() / len(loader))
        synchronize(device)
        seconds.append(time.perf_counter() - began)
    return learner, seconds, losses


def naive_scores(learners, test_images, device, workers=0):
    """rec, unc and dsu of each image, one image at a time, written out from the formulas in utils/method/dsu.py's
    docstring."""
    scores = {name: [] for name in SCORES}
    for x in DataLoader(NaiveImages(test_images), batch_size=1, num_workers=workers):
        x = x.to(device)
        x_hats, variances, input_terms = [], [], []
        for learner in learners:
            x_in = x.clone().requires_grad_(True)
            out = learner(x_in)
            learner.score_error(out, x_in).mean().backward()
            x_hat = out["x_hat"].detach()
            x_hats.append(x_hat)
            variances.append(learner.pixel_variance(out).detach())
            input_terms.append((x_hat - x).abs() * x_in.grad)
        x_hats = torch.stack(x_hats)
        variance = torch.stack(variances).mean(dim=0)
        scores["rec"].append(((x - x_hats.mean(dim=0)).pow(2) / variance).mean().item())
        scores["unc"].append((x_hats.var(dim=0) / variance).sqrt().mean().item())
        scores["dsu"].append((torch.stack(input_terms).std(dim=0) / variance.sqrt()).mean().item())
    return {name: np.asarray(values) for name, values in scores.items()}


# ----------------------------------------------------------------------------------------------- the fast path
def fast_train(train_images, cfg, device, run_dir):
    """train.py's own loop on a training tensor already on the device: (learners, seconds per learner)."""
    images = to_model_input(torch.from_numpy(train_images).unsqueeze(1).to(device))
    log = RunLog(run_dir, "train")
    seniors, seconds = [], []
    for index in range(cfg.Model.num_learners):
        began = time.perf_counter()
        learner = train.train_learner(index, seniors, images, cfg, device, device.type == "cuda", run_dir, log)
        synchronize(device)
        seconds.append(time.perf_counter() - began)
        seniors.append(learner.eval().requires_grad_(False))
    log.close()
    return seniors, seconds


def fast_scores(learners, test_images, device, repeats):
    """eval.score_dataset as eval.py calls it (batch chosen from memory): (image scores, seconds, median)."""
    images = torch.from_numpy(test_images).unsqueeze(1)
    score_dataset(learners, images[:256], 0, device)  # warm-up: kernels, allocator
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        began = time.perf_counter()
        scores = image_scores(score_dataset(learners, images, 0, device).maps)
        seconds.append(time.perf_counter() - began)
    return {name: value.double().numpy() for name, value in scores.items()}, statistics.median(seconds)


def autocast_scores(learners, test_images, device, dtype, repeats, batch_size=256):
    """Image scores under autocast to `dtype` (float32 = none), batched: (scores, median seconds)."""
    images = torch.from_numpy(test_images).unsqueeze(1)
    seconds = []
    for _ in range(repeats + 1):  # the first pass warms up
        synchronize(device)
        began = time.perf_counter()
        parts = {name: [] for name in SCORES}
        for start in range(0, len(images), batch_size):
            x = to_model_input(images[start:start + batch_size].to(device))
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                maps = score_maps(learners, x)
            for name, value in image_scores({name: maps[name].float() for name in SCORES}).items():
                parts[name].append(value.double().cpu())
        seconds.append(time.perf_counter() - began)
    return {name: torch.cat(value).numpy() for name, value in parts.items()}, statistics.median(seconds[1:])


def profile_junior(learners, train_images, cfg, device, path, epochs, rows=30) -> float:
    """Train one more junior (the learners as its seniors) for `epochs` epochs under torch.profiler and write the
    `rows` operators and kernels with the most self time (GPU time on CUDA) to `path`; returns its seconds per
    epoch (median, as the run logged them)."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    images = to_model_input(torch.from_numpy(train_images).unsqueeze(1).to(device))
    index = len(learners)
    with tempfile.TemporaryDirectory(prefix="d2ue-profile-") as run_dir:
        settings = cfg.to_dict()
        settings["Exp"]["out_dir"] = run_dir
        settings["Solver"]["num_epoch"] = epochs
        settings["Model"]["num_learners"] = index + 1
        log = RunLog(run_dir, "train")
        synchronize(device)
        began = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as profiler:
            train.train_learner(index, learners, images, config.from_dict(settings), device, cuda, run_dir, log)
            synchronize(device)
        seconds = time.perf_counter() - began
        log.close()
        epoch_s = statistics.median(epoch_records(run_dir, index + 1)[index][0])
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=70)
    where = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(
        f"learner {index} ({index} seniors), {epochs} epochs of {len(images) // cfg.Solver.bs} steps on {where}, "
        f"{seconds:.2f} s under the profiler (setup, capture and checks included); {epoch_s:.4f} s per epoch "
        f"(median); sorted by {sort_by}\n\n{table}")
    return epoch_s


def warm_up(cfg, train_images, device):
    """Pay one-time costs (library start-up, kernel selection) before anything is timed."""
    learner = models.build(models.backbone_args(cfg.Model, cfg.Data.img_size)).to(device).train()
    optimizer = torch.optim.Adam(learner.parameters())
    x = to_model_input(torch.from_numpy(train_images[:cfg.Solver.bs]).unsqueeze(1).to(device))
    for _ in range(3):
        naive_train_step(learner, optimizer, [], x, cfg.Solver.Lambda)
    score_maps([learner.eval()] * 2, x)
    synchronize(device)


def epoch_records(run_dir, learners):
    """Per learner: (seconds per epoch, mean loss per epoch) from the run's metrics.jsonl."""
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [([r["epoch_s"] for r in records if r["tag"] == f"learner{k}"],
             [r["loss"] for r in records if r["tag"] == f"learner{k}"]) for k in range(learners)]


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def max_relative_difference(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))) if a.size else 0.0


def rounded(value, digits=4):
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item, digits) for item in value]
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        return round(value, max(digits, digits - int(math.floor(math.log10(abs(value)))) - 1))
    return value


@cli
def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    epochs = args.epochs or (30 if cuda else 2)
    naive_epochs = min(args.naive_epochs or (3 if cuda else 1), epochs)
    set_tf32(False)  # the project's default: fp32 everywhere
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    print(f"building {args.n_train} + {args.n_test} synthetic {args.img_size}x{args.img_size} images", flush=True)
    train_images, test_images, labels = make_data(args.n_train, args.n_test, args.img_size)
    n_naive_score = min(args.naive_score_images or (500 if cuda else 100), len(test_images))

    with tempfile.TemporaryDirectory(prefix="d2ue-bench-") as run_dir:
        cfg = config.from_dict({
            "Exp": {"out_dir": run_dir, "device": str(device), "checkpoint_every_s": 1e9},
            "Model": {"network": args.network, "num_learners": args.learners},
            "Data": {"dataset": "bench", "img_size": args.img_size},
            "Solver": {"bs": args.bs, "lr": args.lr, "num_epoch": epochs, "seed": args.seed}})
        warm_up(cfg, train_images, device)
        learners, train_total_s = fast_train(train_images, cfg, device, run_dir)
        fast_epochs = epoch_records(run_dir, args.learners)
    scores, score_s = fast_scores(learners, test_images, device, repeats=3 if cuda else 1)
    peak_mem_mb = peak_memory_mb(device)

    naive_seniors, naive_epoch_s, naive_losses = [], [], []
    for index in range(args.learners):
        learner, seconds, losses = naive_train(index, naive_seniors, train_images, cfg, device, naive_epochs,
                                               args.naive_workers)
        naive_seniors.append(learner.eval().requires_grad_(False))
        naive_epoch_s.append(seconds)
        naive_losses.append(losses)
    naive_test = test_images[:n_naive_score]
    naive_scores(learners, naive_test[:5], device)  # warm-up
    synchronize(device)
    began = time.perf_counter()
    naive = naive_scores(learners, naive_test, device, args.naive_workers)
    naive_score_s = time.perf_counter() - began

    train_s = [statistics.median(seconds) for seconds, _ in fast_epochs]
    naive_train_s = [statistics.median(seconds) for seconds in naive_epoch_s]
    score_rate = len(test_images) / score_s
    naive_score_rate = n_naive_score / naive_score_s
    # Losses agree epoch by epoch while both paths train on the same seniors: all learners when the epochs match,
    # else learner 0 only (the naive seniors are then trained for fewer epochs).
    compared = args.learners if naive_epochs == epochs else 1
    loss_diff = max(max_relative_difference(naive_losses[k], fast_epochs[k][1][:naive_epochs])
                    for k in range(compared))
    setup_s = sum(total - sum(seconds) for total, (seconds, _) in zip(train_total_s, fast_epochs))
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "network": args.network, "n_train": args.n_train, "n_test": len(test_images), "img_size": args.img_size,
        "learners": args.learners, "bs": args.bs, "epochs": epochs, "naive_epochs": naive_epochs,
        "train_s_per_epoch": train_s,
        "train_total_s": train_total_s,
        "score_images_per_s": score_rate,
        "score_s": score_s,
        "peak_mem_mb": peak_mem_mb,
        "naive_train_s_per_epoch": naive_train_s,
        "naive_score_images_per_s": naive_score_rate,
        "naive_score_images": n_naive_score,
        "naive_workers": args.naive_workers,
        "train_speedup": sum(naive_train_s) / sum(train_s),
        "score_speedup": score_rate / naive_score_rate,
        "full_run_estimate_s": setup_s + FULL_EPOCHS * sum(train_s) + score_s,
        "naive_full_run_estimate_s": FULL_EPOCHS * sum(naive_train_s) + len(test_images) / naive_score_rate,
        "loss_max_rel_diff": loss_diff,
        "loss_compared": f"mean loss of epochs 1-{naive_epochs}, learners 0-{compared - 1}",
        "score_max_rel_diff": {name: max_relative_difference(scores[name][:n_naive_score], naive[name])
                               for name in SCORES},
        "auc": {name: image_metrics(labels, scores[name])["auc"] for name in SCORES},
    }
    if args.bf16:
        timed = {}
        for dtype in (torch.float32, torch.bfloat16):
            timed[dtype] = autocast_scores(learners, test_images, device, dtype, repeats=3 if cuda else 1)
        result["bf16_vs_fp32_score_speedup"] = timed[torch.float32][1] / timed[torch.bfloat16][1]
        result["bf16_auc_change"] = {name: image_metrics(labels, timed[torch.bfloat16][0][name])["auc"]
                                     - image_metrics(labels, timed[torch.float32][0][name])["auc"] for name in SCORES}
    if args.profile:
        result["profile_s_per_epoch"] = profile_junior(learners, train_images, cfg, device, args.profile,
                                                       args.profile_epochs)
        result["profile"] = args.profile
    print(json.dumps(rounded(result)), flush=True)


if __name__ == "__main__":
    main()
