"""Fashion-MNIST as a one-class anomaly detection set in the Med-AD layout: <out>/FMNIST_c<class>/images/*.png and
<out>/FMNIST_c<class>/data.json.

    python -m datasets.fashion_mnist --class 4 --out ./Med-AD [--seed 0] [--src /usr/share/datasets/fashion-mnist]

Normal = one class. Train: its training images (6000). Test: its test images (1000) as normal, and as many test
images of the other nine classes as abnormal, drawn without replacement with numpy.random.default_rng(seed).
Images are the 28 x 28 originals, 8-bit grayscale PNGs named by their index in the source file (train_00012.png,
test_00345.png), so a file's content never depends on the seed; only the lists in data.json do.

The data come from Debian's dataset-fashion-mnist package (gzipped IDX files); nothing is downloaded. Each PNG is
written under a temporary name and renamed, existing ones are kept, and data.json is written last, so a killed run
is resumed by running the same command again.
"""
import argparse
import gzip
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from utils.errors import UserError, cli

SOURCE = "/usr/share/datasets/fashion-mnist"
INSTALL = "apt-get install dataset-fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# IDX type codes (third byte of the magic number) -> big-endian numpy types.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """A gzipped IDX file as an array: magic number (0, 0, type code, number of dimensions), the dimensions as
    big-endian uint32, then the data, big-endian. Anything else is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found; install Fashion-MNIST with: {INSTALL} (or pass --src FOLDER)")
    broken = "reinstall it with: apt-get install --reinstall dataset-fashion-mnist"
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as err:  # not gzip, or truncated
        raise UserError(f"{path} cannot be decompressed ({err}); {broken}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number); {broken}")
    header = 4 + 4 * data[3]
    if len(data) < header:
        raise UserError(f"{path} ends inside its IDX header; {broken}")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=data[3], offset=4))
    dtype = np.dtype(IDX_TYPES[data[2]])
    if len(data) - header != math.prod(dims) * dtype.itemsize:
        raise UserError(f"{path} holds {len(data) - header} data bytes but its header announces shape {dims}; "
                        f"{broken}")
    return np.frombuffer(data, dtype, offset=header).reshape(dims)


def load_split(source, split) -> tuple:
    """(uint8 images N x 28 x 28, labels N) of the train or test split."""
    source = Path(source)
    if not source.is_dir():
        raise UserError(f"Fashion-MNIST folder {source} not found; install it with: {INSTALL} (or pass --src FOLDER)")
    image_file, label_file = (source / name for name in FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{image_file} and {label_file} do not hold images and their labels "
                        f"(shapes {images.shape} and {labels.shape}); reinstall them")
    return images, labels.astype(np.int64)


def select(train_labels, test_labels, normal_class, seed) -> dict:
    """Indices of each list: train normal, test normal, and test abnormal (as many as test normal, drawn seeded)."""
    normal_test = np.flatnonzero(test_labels == normal_class)
    others = np.flatnonzero(test_labels != normal_class)
    if len(others) < len(normal_test):
        raise UserError(f"only {len(others)} test images outside class {normal_class}, fewer than its "
                        f"{len(normal_test)} normal test images")
    abnormal = np.random.default_rng(seed).choice(others, size=len(normal_test), replace=False)
    return {("train", "0"): np.flatnonzero(train_labels == normal_class), ("test", "0"): normal_test,
            ("test", "1"): np.sort(abnormal)}


def _write_png(pixels, path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(pixels).save(tmp, format="PNG")
    os.replace(tmp, path)


def make_one_class(out_dir, normal_class, seed=0, source=SOURCE) -> Path:
    """Write the one-class set of `normal_class` (0-9) to <out_dir>/FMNIST_c<class>; returns that folder."""
    if isinstance(normal_class, bool) or not (isinstance(normal_class, int) and 0 <= normal_class < len(CLASSES)):
        raise UserError(f"Fashion-MNIST class must be 0-9 ({', '.join(f'{i} {n}' for i, n in enumerate(CLASSES))}), "
                        f"got {normal_class!r}")
    splits = {split: load_split(source, split) for split in FILES}
    chosen = select(splits["train"][1], splits["test"][1], normal_class, seed)
    folder = Path(out_dir) / f"FMNIST_c{normal_class}"
    images = folder / "images"
    try:
        images.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {images} ({err.strerror}); choose another --out") from None
    for stale in images.glob(".*.tmp"):
        stale.unlink(missing_ok=True)  # left behind by a killed run
    data = {"train": {}, "test": {}}
    for (section, label), indices in chosen.items():
        split = "train" if section == "train" else "test"
        names = [f"{split}_{index:05d}.png" for index in indices]
        for index, name in zip(indices, names):
            if not (images / name).exists():
                _write_png(splits[split][0][index], images / name)
        data[section][label] = names
    tmp = folder / ".data.json.tmp"
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, folder / "data.json")
    return folder


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line like every other user error."""

    def error(self, message):
        raise UserError(f"{message} (see python -m datasets.fashion_mnist --help)")


@cli
def main(argv=None):
    parser = _Parser(prog="python -m datasets.fashion_mnist", description=__doc__.split("\n")[0])
    parser.add_argument("--class", dest="normal_class", type=int, required=True, choices=range(len(CLASSES)),
                        metavar="0-9", help="the normal class: " + ", ".join(f"{i} {n}" for i, n in enumerate(CLASSES)))
    parser.add_argument("--out", required=True, help="Med-AD root; the set goes into <out>/FMNIST_c<class>")
    parser.add_argument("--seed", type=int, default=0, help="seed of the abnormal test images drawn (default 0)")
    parser.add_argument("--src", default=SOURCE, help=f"folder of the gzipped IDX files (default {SOURCE})")
    args = parser.parse_args(argv)
    folder = make_one_class(args.out, args.normal_class, seed=args.seed, source=args.src)
    data = json.loads((folder / "data.json").read_text())
    print(f"{folder}: train {len(data['train']['0'])} normal ({CLASSES[args.normal_class]}); test "
          f"{len(data['test']['0'])} normal / {len(data['test']['1'])} abnormal (seed {args.seed})")


if __name__ == "__main__":
    main()
