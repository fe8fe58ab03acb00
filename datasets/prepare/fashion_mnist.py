"""Fashion-MNIST as a one-class anomaly detection set in the Med-AD layout: <out>/FMNIST_c<class>/images/*.png and
<out>/FMNIST_c<class>/data.json.

    python -m datasets.prepare.fashion_mnist --class 4 --out ./Med-AD [--anomalies local] [--seed 0]
                                     [--src /usr/share/datasets/fashion-mnist]

Normal = one class. Train: its training images (6000). Test: its test images (1000) as normal, and as many test
images of the other nine classes as abnormal, drawn without replacement with numpy.random.default_rng(seed).
Images are the 28 x 28 originals, 8-bit grayscale PNGs named by their index in the source file (train_00012.png,
test_00345.png), so a file's content never depends on the seed; only the lists in data.json do.

`--anomalies local` writes <out>/FMNIST_local_c<class> instead, with local defects, closer to a lesion in an organ:
the same training images; the class's test images, half of them (drawn with default_rng(seed)) kept normal and the
other half given one local defect each, a blob, a patch or a missing region (datasets/prepare/defects.py; the three
kinds in turn, shuffled, so 167 / 167 / 166 of 500, but a kind that cannot show on an image gives way to the next), drawn
with default_rng([seed, index]). A defective image is images/test_<index>_<kind>.png and its mask
masks/test_<index>_<kind>.png (255 = changed pixel, 0 elsewhere); normal images have no mask file, which the loader
reads as an all-zero mask. Patches come from the training images of the other nine classes: foreign content, as a
lesion is foreign to its organ, never normal content merely moved, and never a test image.

The data come from Debian's dataset-fashion-mnist package (gzipped IDX files); nothing is downloaded. Each PNG is
written under a temporary name and renamed, existing ones are kept (defective images and masks, which depend on the
seed, are rewritten, and those of another seed removed), and data.json is written last, so a killed run is resumed
by running the same command again.
"""
import gzip
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.prepare import defects
from utils.atomic import atomic_write, atomic_write_text, remove_leftovers
from utils.errors import ArgumentParser, UserError, cli

SOURCE = "/usr/share/datasets/fashion-mnist"
INSTALL = "apt-get install dataset-fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# IDX type codes (third byte of the magic number) -> big-endian numpy types.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# The files make_local_set writes, and may remove when a rerun no longer lists them.
LOCAL_NAME = re.compile(rf"(train|test)_\d{{5}}(_({'|'.join(defects.KINDS)}))?\.png")
SET_NAME = re.compile(r"FMNIST_(local_)?c(\d)")


def set_name(normal_class, anomalies="semantic") -> str:
    """The folder, and data set, name of the one-class set of `normal_class`: FMNIST_c<class>, or
    FMNIST_local_c<class> with local defects ("local"). Both have the same training images."""
    return f"FMNIST_{'local_' if anomalies == 'local' else ''}c{normal_class}"


def parse_set_name(name):
    """(normal class, "semantic" or "local") of a name set_name writes; None for any other name."""
    match = SET_NAME.fullmatch(name)
    return (int(match[2]), "local" if match[1] else "semantic") if match else None


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
    with atomic_write(path, "wb") as handle:
        Image.fromarray(pixels).save(handle, format="PNG")


def _check_class(normal_class) -> None:
    if isinstance(normal_class, bool) or not (isinstance(normal_class, int) and 0 <= normal_class < len(CLASSES)):
        raise UserError(f"Fashion-MNIST class must be 0-9 ({', '.join(f'{i} {n}' for i, n in enumerate(CLASSES))}), "
                        f"got {normal_class!r}")


def _make_folder(folder) -> Path:
    """folder, created; the temporary files a killed run left in it removed."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {folder} ({err.strerror}); choose another --out") from None
    remove_leftovers(folder)
    return folder


def _write_originals(images, split, pixels, indices) -> list:
    """Names of the source images `indices` of a split, written where not there yet (they never depend on the
    seed)."""
    names = [f"{split}_{index:05d}.png" for index in indices]
    for index, name in zip(indices, names):
        if not (images / name).exists():
            _write_png(pixels[index], images / name)
    return names


def _write_data_json(folder, data) -> None:
    atomic_write_text(folder / "data.json", json.dumps(data, indent=1) + "\n")


def make_one_class(out_dir, normal_class, seed=0, source=SOURCE) -> Path:
    """Write the one-class set of `normal_class` (0-9) to <out_dir>/FMNIST_c<class>; returns that folder."""
    _check_class(normal_class)
    splits = {split: load_split(source, split) for split in FILES}
    chosen = select(splits["train"][1], splits["test"][1], normal_class, seed)
    folder = Path(out_dir) / set_name(normal_class)
    images = _make_folder(folder / "images")
    data = {"train": {}, "test": {}}
    for (section, label), indices in chosen.items():
        split = "train" if section == "train" else "test"
        data[section][label] = _write_originals(images, split, splits[split][0], indices)
    _write_data_json(folder, data)
    return folder


def select_local(test_labels, normal_class, seed) -> tuple:
    """Test indices of the class kept normal, those given a defect (half, rounded down, drawn seeded), and the
    kind of each defect (the kinds in turn, shuffled, so that their counts differ by one at most)."""
    normal_test = np.flatnonzero(test_labels == normal_class)
    generator = np.random.default_rng(seed)
    defective = np.sort(generator.choice(normal_test, size=len(normal_test) // 2, replace=False))
    kinds = [defects.KINDS[k] for k in generator.permutation(np.arange(len(defective)) % len(defects.KINDS))]
    return np.setdiff1d(normal_test, defective), defective, kinds


def make_local_set(out_dir, normal_class, seed=0, source=SOURCE) -> Path:
    """Write the local-defect set of `normal_class` (0-9) to <out_dir>/FMNIST_local_c<class>; returns that folder."""
    _check_class(normal_class)
    (train_pixels, train_labels), (test_pixels, test_labels) = (load_split(source, split) for split in FILES)
    normal, defective, kinds = select_local(test_labels, normal_class, seed)
    folder = Path(out_dir) / set_name(normal_class, "local")
    images, masks = _make_folder(folder / "images"), _make_folder(folder / "masks")
    donors = train_pixels[train_labels != normal_class]
    names = []
    for index, kind in zip(defective, kinds):  # rewritten every time: they depend on the seed
        pixels, mask, kind = defects.draw_defect(np.random.default_rng([seed, index]), test_pixels[index], kind,
                                                 donors)
        names.append(f"test_{index:05d}_{kind}.png")
        _write_png(pixels, images / names[-1])
        _write_png(mask.astype(np.uint8) * 255, masks / names[-1])
    train = np.flatnonzero(train_labels == normal_class)
    data = {"train": {"0": _write_originals(images, "train", train_pixels, train)},
            "test": {"0": _write_originals(images, "test", test_pixels, normal), "1": names}}
    listed = {name for lists in data.values() for files in lists.values() for name in files}
    stale = [path for path in images.iterdir() if LOCAL_NAME.fullmatch(path.name) and path.name not in listed]
    stale += [path for path in masks.iterdir() if LOCAL_NAME.fullmatch(path.name) and path.name not in names]
    for path in stale:  # left by an earlier run with another seed
        path.unlink()
    _write_data_json(folder, data)
    return folder


@cli
def main(argv=None):
    parser = ArgumentParser(prog="python -m datasets.prepare.fashion_mnist", description=__doc__.split("\n")[0])
    parser.add_argument("--class", dest="normal_class", type=int, required=True, choices=range(len(CLASSES)),
                        metavar="0-9", help="the normal class: " + ", ".join(f"{i} {n}" for i, n in enumerate(CLASSES)))
    parser.add_argument("--out", required=True, help="Med-AD root; the set goes into <out>/FMNIST_c<class> "
                                                     "(--anomalies local: <out>/FMNIST_local_c<class>)")
    parser.add_argument("--anomalies", choices=("semantic", "local"), default="semantic",
                        help="semantic (default): the other classes' test images; local: the class's own test "
                             "images, half of them with a local defect and its mask")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the abnormal test images drawn, or of the defects (default 0)")
    parser.add_argument("--src", default=SOURCE, help=f"folder of the gzipped IDX files (default {SOURCE})")
    args = parser.parse_args(argv)
    if args.seed < 0:
        raise UserError(f"--seed must be at least 0, got {args.seed}")
    make = make_local_set if args.anomalies == "local" else make_one_class
    folder = make(args.out, args.normal_class, seed=args.seed, source=args.src)
    data = json.loads((folder / "data.json").read_text())
    if args.anomalies == "local":
        counts = Counter(name.rsplit("_", 1)[1].removesuffix(".png") for name in data["test"]["1"])
        abnormal = (f"{len(data['test']['1'])} with a local defect ("
                    + ", ".join(f"{counts[kind]} {kind}" for kind in defects.KINDS) + ")")
    else:
        abnormal = f"{len(data['test']['1'])} abnormal"
    print(f"{folder}: train {len(data['train']['0'])} normal ({CLASSES[args.normal_class]}); test "
          f"{len(data['test']['0'])} normal / {abnormal} (seed {args.seed})")


if __name__ == "__main__":
    main()
