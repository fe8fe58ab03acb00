"""Check once, on your GPU, that training with the captured CUDA-graph step (Exp.cuda_graph, on by default) gives what
eager training gives.

    ./scripts/check_gpu.sh [--out DIR] [--data ROOT] [--device auto] [--tiny]

Trains the demo (cfgs/Demo_AE.yaml) and the demo with the repulsion and training's own BatchNorm statistics
(Solver.Lambda=1 Solver.precise_bn=false) three times each from the same seed: eagerly, eagerly again (the GPU's
run-to-run noise) and with the captured step; scores the demo's test set with each run; and compares the captured
runs' per-epoch losses and test scores with the eager ones against that noise, or against a floor where eager
training repeats bit for bit. Prints a verdict with the GPU, the torch and CUDA versions and each path's time, and
what to paste into an issue when they differ. Exit code 0 when they agree, 1 when not (or when the captured step was
refused by its own check), 2 on a usage error.

The run folders go to --out (a new folder; default a fresh one under the system's temporary folder), never over
existing runs. The demo data is read from --data (a folder holding demo/), else ./data/demo when it is there, else
made under --out. On the CPU the same runs are a rehearsal: there the captured path is the eager step.
--tiny: 48 training images, 2 learners, 1 epoch, 32 x 32: a rehearsal of seconds (the test suite's).
"""
import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import train
from datasets.medad import dataset_dir, load_images, read_split
from datasets.prepare.demo import make_demo
from utils.errors import ArgumentParser, UserError, cli
from utils.method.dsu import image_scores, score_dataset
from utils.report.metrics import image_metrics
from utils.run import checkpoint, config
from utils.run.runtime import pick_device, set_tf32

CONFIG = Path(__file__).resolve().parent / "cfgs" / "Demo_AE.yaml"
SETTINGS = {"demo": [], "repulsion": ["Solver.Lambda=1", "Solver.precise_bn=false"]}
PATHS = {"eager": False, "eager again": False, "captured": True}  # Exp.cuda_graph
EPOCHS = 4  # short runs: rounding differences grow with every step, soon as large as the runs' own changes
TINY = ["Model.num_learners=2", "Solver.num_epoch=1", "Data.img_size=32", "Solver.bs=16"]
TINY_DATA = {"n_train": 48, "n_test_normal": 8, "n_test_abnormal": 8, "size": 32}
NOISE_FACTOR = 4  # captured may differ from eager by this many times eager's own run-to-run difference
# ... or by these, when eager repeats (nearly) bit for bit: 2.6 to 5 times what rounding alone (the rows of every
# batch permuted, on the CPU) grows to in these runs; training is chaotic, the repulsion most (docs/speed.md)
FLOORS = {"demo": {"losses": 0.02, "scores": 0.5}, "repulsion": {"losses": 0.2, "scores": 1.0}}


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="a new or empty folder for the runs (default: a fresh temporary folder)")
    parser.add_argument("--data", help="Data.root holding the demo data set, demo/ (default ./data if it holds "
                        "demo/, else made under --out)")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu (default auto)")
    parser.add_argument("--tiny", action="store_true", help="a rehearsal of seconds on tiny data (the test's)")
    return parser.parse_args(argv)


def output_folder(path) -> Path:
    """The folder the runs go to: a fresh temporary one, or the user's, which must be new or empty."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="d2ue-check-gpu-"))
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; give a new folder (runs are never written "
                        "over)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def data_root(args, out) -> Path:
    """Data.root of the demo data: --data, ./data when it holds the demo, or a new one under `out`."""
    if args.data is not None:
        if not (Path(args.data) / "demo" / "data.json").is_file():
            raise UserError(f"--data {args.data} holds no demo data set (demo/data.json); make one with "
                            f"python -m datasets.prepare.demo {Path(args.data) / 'demo'}, or leave --data out")
        return Path(args.data)
    if not args.tiny and (Path("data") / "demo" / "data.json").is_file():
        return Path("data")
    print("making the demo data set under the output folder")
    make_demo(out / "data" / "demo", **(TINY_DATA if args.tiny else {}))
    return out / "data"


def describe(device) -> str:
    """The machine in one line: the GPU, torch, CUDA and cuDNN versions."""
    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device}); {versions}"
    return f"CPU ({platform.processor() or platform.machine()}), no GPU used: a rehearsal; {versions}"


def overrides_of(root, folder, device, setting, graph, tiny) -> list:
    """The overrides of cfgs/Demo_AE.yaml for one run of a setting."""
    return [f"Data.root={root}", f"Exp.out_dir={folder}", f"Exp.device={device}",
            f"Exp.cuda_graph={str(graph).lower()}", f"Solver.num_epoch={EPOCHS}", *SETTINGS[setting],
            *(TINY if tiny else [])]


def train_and_score(overrides, device) -> dict:
    """One run: trained and timed, then its learners' rec, unc and dsu of each test image (eval.py's raw scores,
    without its figures) and their AUCs; and its per-epoch losses."""
    cfg = config.load(CONFIG, overrides)
    set_tf32(cfg.Exp.tf32)
    began = time.perf_counter()
    run_dir = train.train(cfg, device, echo=False)
    trained = time.perf_counter()
    split = read_split(dataset_dir(cfg.Data.root, cfg.Data.dataset))
    images = load_images(split.directory, split.test, cfg.Data.img_size)
    learners = checkpoint.load_learners(run_dir, cfg, device)
    maps = score_dataset(learners, images, cfg.Exp.score_batch, device).maps
    scores = {name: value.double().cpu().numpy() for name, value in image_scores(maps).items()}
    scored = time.perf_counter()
    log = (run_dir / "train.log").read_text()
    warnings = [line.split("warning: ", 1)[1] for line in log.splitlines() if "CUDA graph capture not used" in line]
    return {"train_s": trained - began, "score_s": scored - trained, "captured": "captured as a CUDA graph" in log,
            "capture_warnings": warnings, "losses": losses_of(run_dir), "scores": scores,
            "auc": {name: image_metrics(np.asarray(split.test_labels), value)["auc"] for name, value in scores.items()}}


def losses_of(run_dir) -> dict:
    """{"learner<k> epoch <e>": loss} from metrics.jsonl."""
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return {f"{record['tag']} epoch {record['step']}": record["loss"] for record in records
            if record["tag"].startswith("learner")}


def difference(a, b, what) -> tuple:
    """(the relative difference of `a` from `b`, where it is largest): of the per-epoch losses all together, or of
    each score's values on the test images, the largest over the scores (norms)."""
    if what == "losses":
        keys = list(b)
        found, eager = np.array([a[key] for key in keys]), np.array([b[key] for key in keys])
        return relative(found, eager), keys[int(np.argmax(np.abs(found - eager) / np.abs(eager)))]
    return max((relative(a[name], b[name]), name) for name in b)


def relative(found, eager) -> float:
    return float(np.linalg.norm(found - eager) / max(np.linalg.norm(eager), 1e-12))


def compare(runs, floors) -> list:
    """[(what, captured's difference from eager, where, eager's own, the limit, within)] of one setting's runs."""
    rows = []
    for what in ("losses", "scores"):
        captured, where = difference(runs["captured"][what], runs["eager"][what], what)
        noise, _ = difference(runs["eager again"][what], runs["eager"][what], what)
        limit = max(NOISE_FACTOR * noise, floors[what])
        rows.append((what, captured, where, noise, limit, captured <= limit))
    return rows


def check(args) -> int:
    device = pick_device(args.device)
    out = output_folder(args.out)
    root = data_root(args, out)
    lines = [f"check_gpu: {describe(device)}", f"runs in {out}"]
    print("\n".join(lines))
    problems = []
    for setting in SETTINGS:
        runs = {}
        for path, graph in PATHS.items():
            folder = out / setting / path.replace(" ", "_")
            runs[path] = run = train_and_score(overrides_of(root, folder, device, setting, graph, args.tiny), device)
            lines.append(f"{setting} {path}: trained in {run['train_s']:.1f} s, scored in {run['score_s']:.1f} s; "
                         + ", ".join(f"{name} AUC {value:.4f}" for name, value in run["auc"].items()))
            print(lines[-1])
        if device.type == "cuda" and not runs["captured"]["captured"]:
            problems.append(f"{setting}: the captured step was not used: "
                            + "; ".join(runs["captured"]["capture_warnings"] or ["train.log says no capture"]))
        for what, found, where, noise, limit, within in compare(runs, FLOORS[setting]):
            lines.append(f"{setting} {what}: captured vs eager {found:.3g} (largest, at {where}); eager vs eager "
                         f"{noise:.3g}; limit {limit:.3g}: {'same' if within else 'DIFFERENT'}")
            print(lines[-1])
            if not within:
                problems.append(lines[-1])
    text, code = verdict(device, problems, out)
    (out / "check_gpu.txt").write_text("\n".join(lines + [text]) + "\n")
    print(text)
    return code


def verdict(device, problems, out) -> tuple:
    """(the verdict's text, the exit code)."""
    if device.type != "cuda":
        if problems:
            return "verdict: the rehearsal found differences: " + "; ".join(problems), 1
        return "verdict: rehearsal passed (no GPU: the captured path is the eager step here; run this on a GPU)", 0
    if not problems:
        return "verdict: the captured step trains as the eager step does on this GPU; keep Exp.cuda_graph=true", 0
    return "\n".join([
        "verdict: the captured step does NOT train as the eager step does on this GPU: train with "
        "Exp.cuda_graph=false, and please open an issue with the lines of "
        f"{out / 'check_gpu.txt'} and the train.log of each captured run ({out}/*/captured/train.log):",
        *[f"  {problem}" for problem in problems]]), 1


@cli
def main(argv=None) -> int:
    return check(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
