"""The built-in synthetic data set: chest-X-ray-like images in the Med-AD layout, made in a few seconds.

Normal images: a soft body outline on a dark background, two dark lungs with faint ribs, spine and heart shadow,
with mild variation in shape, position and intensity between subjects, smooth and pixel noise.
Abnormal test images carry one lesion each (6-20 % of a lung), cycling through three kinds:
  opacity  a soft bright blob (consolidation)
  missing  part of a lung filled with soft-tissue intensity (collapse / effusion)
  texture  a patch of fine reticular texture
Masks (255 = lesion) are written for the abnormal test images only.

    python -m datasets.prepare.demo                  the demo's data in ./data/demo, where cfgs/Demo_AE.yaml reads it
    python -m datasets.prepare.demo OUT_DIR [--n-train 3851 --n-test 2000 --size 512 --workers 16]   (RSNA-sized)
"""
import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from utils.errors import ArgumentParser, UserError, cli

LESIONS = ("opacity", "missing", "texture")
DEMO_DIR = Path("data") / "demo"  # Data.root ./data and Data.dataset demo of cfgs/Demo_AE.yaml
DEMO_TRAIN = 1000  # the demo's normal training images: many, each seen in few epochs (cfgs/Demo_AE.yaml says why)


def _soft_ellipse(yy, xx, center, axes, angle, edge):
    """1 inside, 0 outside, a sigmoid across the border; edge is in units of the ellipse radius."""
    dy, dx = yy - center[0], xx - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * dx + sin * dy) / axes[1]
    v = (-sin * dx + cos * dy) / axes[0]
    return 1 / (1 + np.exp(-(1 - np.sqrt(u * u + v * v)) / edge))


def _smooth_noise(rng, size, cells=6):
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


def _lesion(rng, kind, lung, yy, xx, size):
    """Soft lesion weight inside the given lung: (weight, intensity change or None, erase?)."""
    center, axes = lung
    fraction = rng.uniform(0.06, 0.20)
    radius = np.sqrt(fraction * axes[0] * axes[1])  # pi r^2 = fraction * pi a b
    angle = rng.uniform(0, 2 * np.pi)
    if kind == "missing":
        # Centred near the lung border, so the lung loses a piece of its outline; larger because half lies outside.
        reach, radius = rng.uniform(0.55, 0.8), radius * 1.2
    else:
        reach = rng.uniform(0.0, 0.55)
    spot = (center[0] + reach * axes[0] * np.sin(angle), center[1] + reach * axes[1] * np.cos(angle))
    aspect = rng.uniform(0.75, 1.33)
    weight = _soft_ellipse(yy, xx, spot, (radius * aspect, radius / aspect), rng.uniform(0, np.pi), 0.2)
    if kind == "opacity":
        return weight, rng.uniform(0.12, 0.22) * weight
    if kind == "texture":
        period = rng.uniform(7, 9) / size * 2  # 7-9 pixels at full size, still 3.5-4.5 at half size
        theta = rng.uniform(0, np.pi)
        along = (np.cos(theta) * xx + np.sin(theta) * yy) / period
        across = (-np.sin(theta) * xx + np.cos(theta) * yy) / period
        grating = np.sin(2 * np.pi * along) * np.sin(2 * np.pi * across + rng.uniform(0, 2 * np.pi))
        return weight, rng.uniform(0.16, 0.24) * grating * weight
    return weight, None


def make_image(rng, size=128, lesion=None):
    """One synthetic chest image as uint8 (size, size), and its lesion mask (bool) or None."""
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j].astype(np.float32)
    jitter = lambda scale: rng.normal(0, scale)  # noqa: E731
    body = _soft_ellipse(yy, xx, (0.08 + jitter(0.02), jitter(0.02)), (1.0 + jitter(0.03), 0.86 + jitter(0.03)),
                         jitter(0.02), 0.04)
    tissue = 0.52 + jitter(0.03) + (0.10 + jitter(0.02)) * yy
    lung_y, lung_x = -0.08 + jitter(0.03), 0.38 + jitter(0.02)
    lungs = [((lung_y + jitter(0.015), side * (lung_x + jitter(0.015))),
              (0.50 + jitter(0.025), 0.23 + jitter(0.015)), side * (0.08 + jitter(0.03)))
             for side in (-1, 1)]
    lung_masks = [_soft_ellipse(yy, xx, center, axes, angle, 0.07) for center, axes, angle in lungs]

    # Lesions draw from their own stream, so the same subject can be rendered with and without one.
    lesion_rng = np.random.default_rng(rng.integers(2 ** 63))
    add, mask = 0.0, None
    if lesion is not None:
        side = int(lesion_rng.integers(2))
        for _ in range(20):  # a lesion that fell outside the lung is drawn again
            weight, change = _lesion(lesion_rng, lesion, lungs[side][:2], yy, xx, size)
            inside = weight * lung_masks[side]
            mask = inside > 0.5
            if mask.sum() >= 4:
                break
        if change is None:  # missing structure: the lung is erased where the lesion is
            lung_masks[side] = lung_masks[side] * (1 - weight)
        else:
            add = change * lung_masks[side]

    lung = lung_masks[0] + lung_masks[1]
    heart = _soft_ellipse(yy, xx, (0.25 + jitter(0.02), 0.10 + jitter(0.02)), (0.26 + jitter(0.02), 0.2), 0.3, 0.12)
    spine = np.exp(-(xx / (0.07 + abs(jitter(0.005)))) ** 2) * (yy > -0.85)
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * (yy * (2.6 + jitter(0.1)) + 0.9 * xx ** 2) + rng.uniform(0, 6.3))) ** 6
    image = (0.06 + 0.03 * (yy + 1)
             + body * (tissue + 0.10 * spine + 0.06 * heart)
             - (0.30 + jitter(0.025)) * lung * (1 - 0.6 * heart) + 0.05 * ribs * lung
             + add
             + 0.03 * _smooth_noise(rng, size) + rng.normal(0, 0.015, (size, size)))
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return pixels, mask


def _make_and_save(directory, seed, split_id, split, index, size):
    rng = np.random.default_rng([seed, split_id, index])  # one stream per image, whichever process draws it
    lesion = LESIONS[index % len(LESIONS)] if split == "test_abnormal" else None
    pixels, mask = make_image(rng, size, lesion)
    name = f"{split}_{index:04d}.png" if lesion is None else f"{split}_{index:04d}_{lesion}.png"
    Image.fromarray(pixels).save(directory / "images" / name, compress_level=1)
    if mask is not None:
        Image.fromarray(mask.astype(np.uint8) * 255).save(directory / "masks" / name, compress_level=1)
    return name


def _write(directory, seed, n_train, n_test_normal, n_test_abnormal, size, workers=1):
    (directory / "images").mkdir()
    (directory / "masks").mkdir()
    splits = {"train": [], "test_normal": [], "test_abnormal": []}
    jobs = [(split_id, split, index) for split_id, (split, count) in
            enumerate(zip(splits, (n_train, n_test_normal, n_test_abnormal))) for index in range(count)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            names = list(pool.map(_make_and_save, *zip(*[(directory, seed, *job, size) for job in jobs]),
                                  chunksize=64))
    else:
        names = [_make_and_save(directory, seed, *job, size) for job in jobs]
    for (_, split, _), name in zip(jobs, names):
        splits[split].append(name)
    data = {"train": {"0": splits["train"]}, "test": {"0": splits["test_normal"], "1": splits["test_abnormal"]}}
    (directory / "data.json").write_text(json.dumps(data, indent=1) + "\n")


def make_demo(directory, seed=0, n_train=DEMO_TRAIN, n_test_normal=100, n_test_abnormal=100, size=128,
              workers=1) -> Path:
    """Write the demo data set to directory (which must not exist or be empty); returns the directory. The images
    do not depend on `workers` (processes drawing them)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Built in a hidden sibling and renamed at the end, so an interrupted run never leaves half a data set.
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-partial-", dir=directory.parent))
    try:
        _write(staging, seed, n_train, n_test_normal, n_test_abnormal, size, workers)
        staging.chmod(0o755)
        try:
            os.replace(staging, directory)
        except OSError:
            if not (directory / "data.json").is_file():  # not a data set made by a concurrent run either
                raise UserError(f"cannot write the demo data set to {directory}: the folder exists and is not "
                                f"empty; remove it or choose another folder") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


@cli
def main(argv=None):
    parser = ArgumentParser(prog="python -m datasets.prepare.demo", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", nargs="?", default=str(DEMO_DIR),
                        help=f"folder to create (default {DEMO_DIR}, the demo config's data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--n-train", type=int, default=DEMO_TRAIN,
                        help=f"normal training images (default {DEMO_TRAIN})")
    parser.add_argument("--n-test", type=int, default=200, help="test images, half of them abnormal (default 200)")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing the images (default 1)")
    args = parser.parse_args(argv)
    for name in ("size", "n_train", "n_test", "workers"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    out = Path(args.out_dir)
    if (out / "data.json").is_file():
        print(f"{out} already holds a data set (data.json); left as it is (remove the folder to make it again)")
        return
    make_demo(out, seed=args.seed, n_train=args.n_train, n_test_normal=args.n_test - args.n_test // 2,
              n_test_abnormal=args.n_test // 2, size=args.size, workers=args.workers)
    print(f"wrote the synthetic data set to {out}: {args.n_train} normal training images, "
          f"{args.n_test - args.n_test // 2} normal and {args.n_test // 2} abnormal test images with lesion masks, "
          f"{args.size} px")


if __name__ == "__main__":
    main()
