"""The float noise the CUDA-graph check (utils/run/cuda_graph.py) and check_gpu.py must accept, measured as what
permuting the rows of each batch changes (summation order alone).

    python scripts/dev/capture_noise.py [--device cpu] [--networks AE AE-U MemAE] [--lambdas 0 1] [--img-size 64]
                                        [--bs 32] [--lr 2e-3] [--n-train 256] [--seed 0]
    python scripts/dev/capture_noise.py --runs [--device cpu] [--tiny]

Steps (the check's tolerances): each of the first cuda_graph.CHECK_STEPS steps of a junior (one senior, its features
cached) on demo images against the same step with its batch rows permuted, from the same state.

For each backbone, Lambda and kind of comparison, prints the headroom of the check's tolerance over the noise: the
smallest ratio, over the parameters, buffers, terms or outputs and the steps, of what the check allows to the
difference found (rtol * part + atol * whole over error; above 1 the noise passes), and where it is smallest. For
the gradients it also prints the smallest share of the whole gradient that one BatchNorm weight holds and the margin
by which that weight's gradient halved would be refused (0.5 * share over rtol * share + atol). The last line is one
JSON object of the same numbers.

--runs (check_gpu.py's floors): each of check_gpu's settings trained and scored as check_gpu does, eagerly and
eagerly with the rows of every batch permuted; prints check_gpu's differences between the two (the largest relative
difference of the per-epoch losses and of the test scores) and check_gpu's floors. The demo data is made in a
temporary folder (--tiny: check_gpu's tiny data and settings).
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

import check_gpu  # noqa: E402
import models  # noqa: E402
import train  # noqa: E402
from datasets.medad import load_images, read_split  # noqa: E402
from datasets.prepare.demo import make_demo  # noqa: E402
from utils.errors import ArgumentParser, cli  # noqa: E402
from utils.method.rar import features_of  # noqa: E402
from utils.run import config, cuda_graph  # noqa: E402
from utils.run.optimizer import adam  # noqa: E402
from utils.run.runtime import pick_device  # noqa: E402


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--networks", nargs="+", default=list(models.MODELS), choices=list(models.MODELS))
    parser.add_argument("--lambdas", nargs="+", type=float, default=[0.0, 1.0], help="Solver.Lambda values")
    parser.add_argument("--img-size", type=int, default=64, help="image side (default 64, the demo's)")
    parser.add_argument("--bs", type=int, default=32, help="batch size (default 32, the demo's)")
    parser.add_argument("--lr", type=float, default=2e-3, help="learning rate (default 2e-3, the demo's)")
    parser.add_argument("--n-train", type=int, default=256, help="demo training images drawn (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the learners and of the batches (default 0)")
    parser.add_argument("--runs", action="store_true", help="whole runs as check_gpu.py trains them, not steps")
    parser.add_argument("--tiny", action="store_true", help="with --runs: check_gpu's tiny setting")
    return parser.parse_args(argv)


def headroom(rows, tolerance) -> tuple:
    """(the smallest ratio of the allowed difference to the difference found, the row where it is smallest)."""
    rtol, atol = tolerance
    return min(((rtol * part + atol * whole) / error if error else float("inf"), name)
               for name, error, part, whole in rows)


def smallest_share(rows, names) -> tuple:
    """(the smallest share of the whole that one of these parameters' gradient holds, its name)."""
    return min((part / whole, name) for name, error, part, whole in rows if name in names and part)


def measure(network, Lambda, images, args, device) -> dict:
    """{kind: (headroom, row)} over the check's steps of a junior, and the smallest BatchNorm weight share."""
    backbone = models.backbone_args(config.Model(network=network), args.img_size)
    torch.manual_seed(args.seed)
    senior = models.place(models.build(backbone), device).eval().requires_grad_(False)
    torch.manual_seed(args.seed + 1)
    learner = models.place(models.build(backbone), device).train()
    optimizer = adam(learner, config.Solver(lr=args.lr), device)
    cached = [features_of(senior, images)] if Lambda else []

    def step(batch):
        return train.train_step(learner, optimizer, images[batch], [features[batch] for features in cached], Lambda)

    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed + 2)).to(device)
    batches = [order[i * args.bs:(i + 1) * args.bs] for i in range(cuda_graph.CHECK_STEPS)]
    fixed = images[batches[0]]
    rows = {kind: [] for kind in [*cuda_graph.TOLERANCES, "update"]}
    for batch in batches:
        before = cuda_graph.snapshot(learner, optimizer)
        permuted = cuda_graph.observe(step(batch.flip(0)), learner, fixed)
        rows["update"] += cuda_graph.update_table(learner, optimizer, before)
        cuda_graph.restore(learner, optimizer, before)
        eager = cuda_graph.observe(step(batch), learner, fixed)
        for kind, kind_rows in cuda_graph.differences(eager, permuted, before).items():
            rows[kind] += kind_rows
    tolerances = {**cuda_graph.TOLERANCES, "update": cuda_graph.UPDATE_TOLERANCE}
    batchnorm_weights = {f"{name}.weight" for name, module in learner.named_modules()
                         if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)}
    return {"headroom": {kind: headroom(kind_rows, tolerances[kind]) for kind, kind_rows in rows.items()},
            "bn_weight_share": smallest_share(rows["gradient"], batchnorm_weights)}


def permuted_rows(learner, optimizer, x, seniors, Lambda):
    """train.train_step on the batch with its rows in reverse order."""
    return train_step(learner, optimizer, x.flip(0), [features.flip(0) for features in seniors], Lambda)


train_step = train.train_step


def runs(args, device) -> None:
    """check_gpu's settings trained eagerly and with permuted rows; their differences as check_gpu computes them."""
    results = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "data"
        make_demo(root / "demo", **(check_gpu.TINY_DATA if args.tiny else {}))
        for setting in check_gpu.SETTINGS:
            found = {}
            for path in ("eager", "permuted"):
                overrides = check_gpu.overrides_of(root, Path(folder) / setting / path, device, setting, False,
                                                   args.tiny)
                train.train_step = permuted_rows if path == "permuted" else train_step
                try:
                    found[path] = check_gpu.train_and_score(overrides, device)
                finally:
                    train.train_step = train_step
            for what in ("losses", "scores"):
                value, where = check_gpu.difference(found["permuted"][what], found["eager"][what], what)
                floor = check_gpu.FLOORS[setting][what]
                print(f"{setting:9} {what:6}  permuted rows vs eager {value:9.3g} (largest at {where}); check_gpu's "
                      f"floor {floor:g} is {floor / value if value else float('inf'):.3g}x that")
                results.append({"setting": setting, "what": what, "difference": value, "where": where})
    print(json.dumps({"device": str(device), "tiny": args.tiny, "results": results}))


@cli
def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.runs:
        return runs(args, device)
    with tempfile.TemporaryDirectory() as folder:
        make_demo(Path(folder) / "demo", seed=0, n_train=args.n_train, n_test_normal=1, n_test_abnormal=1,
                  size=args.img_size)
        split = read_split(Path(folder) / "demo")
        images = models.to_model_input(load_images(split.directory, split.train, args.img_size).to(device))
    results = []
    for network in args.networks:
        for Lambda in args.lambdas:
            found = measure(network, Lambda, images, args, device)
            for kind, (ratio, name) in found["headroom"].items():
                print(f"{network:6} Lambda {Lambda:g}  {kind:10}  headroom {ratio:9.3g} ({name})")
            share, name = found["bn_weight_share"]
            rtol, atol = cuda_graph.TOLERANCES["gradient"]
            margin = 0.5 * share / (rtol * share + atol)
            print(f"{network:6} Lambda {Lambda:g}  smallest BatchNorm weight share of the gradient {share:.3g} "
                  f"({name}), halved refused by a margin of {margin:.3g}")
            results.append({"network": network, "Lambda": Lambda, "bn_weight_share": share, "halved_margin": margin,
                            **{kind: ratio for kind, (ratio, _) in found["headroom"].items()}})
    print(json.dumps({"device": str(device), "img_size": args.img_size, "bs": args.bs, "lr": args.lr, "seed": args.seed,
                      "results": results}))


if __name__ == "__main__":
    main()
