"""Turn the raw downloads into the Med-AD layout: <out>/<FOLDER>/images/ and <out>/<FOLDER>/data.json.

    python -m datasets.prepare {rsna,vin,brain,lag} --src RAW --out ROOT [--split FILE|seeded] [--allow-missing]
                                                                       [--workers N] [--seed S]
    python -m datasets.prepare fmnist --class C --out ROOT [--anomalies local] [--seed S]
                                                 (a one-class Fashion-MNIST dev set, other classes as anomalies, or
                                                  with --anomalies local the class with local defects and masks;
                                                  datasets/prepare/fashion_mnist.py)
    python -m datasets.prepare validation FOLDER --count N [--seed S]
                                                (labelled images kept apart from FOLDER's test set, to choose a
                                                 setting on: FOLDER_val and FOLDER_test; datasets/prepare/validation.py)

FOLDER is RSNA, VinCXR, BrainTumor or LAG. data.json is
    {"train": {"0": [normal training files]}, "test": {"0": [normal test files], "1": [abnormal test files]}}

The raw layouts expected under --src: datasets/prepare/raw.py; the split: datasets/prepare/split.py; the conversion:
datasets/prepare/convert.py.
"""
import sys

from datasets.medad import usable_cpus
from datasets.prepare.convert import prepare
from datasets.prepare.raw import DATASETS
from utils.errors import ArgumentParser, cli


def parse_args(argv=None):
    parser = ArgumentParser(prog="python -m datasets.prepare",
                            description="Convert a raw download into the Med-AD layout (see the module docstring).")
    parser.add_argument("dataset", choices=list(DATASETS), help="which data set the raw folder holds (or fmnist: "
                                                                "python -m datasets.prepare fmnist --help)")
    parser.add_argument("--src", required=True, help="the raw download folder")
    parser.add_argument("--out", required=True, help="Med-AD root; the data set goes into <out>/<FOLDER>")
    parser.add_argument("--split", help="a split file shaped like data.json, or 'seeded' to draw a split (not the "
                                        "benchmark); default: the benchmark's own split, shipped in datasets/splits")
    parser.add_argument("--allow-missing", action="store_true",
                        help="write data.json even when listed files are missing from --src (without them)")
    parser.add_argument("--workers", type=int, default=usable_cpus(),
                        help="conversion processes (default: one per CPU this process may run on)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --split seeded")
    return parser.parse_args(argv)


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["fmnist"]:  # not a Med-AD download: a dev set with options of its own
        from datasets.prepare import fashion_mnist
        return fashion_mnist.main(argv[1:])
    if argv[:1] == ["validation"]:  # a prepared data set's test images split into a validation and a test set
        from datasets.prepare import validation
        return validation.main(argv[1:])
    args = parse_args(argv)
    prepare(args.dataset, args.src, args.out, split=args.split, workers=args.workers, seed=args.seed,
            allow_missing=args.allow_missing)


if __name__ == "__main__":
    main()
