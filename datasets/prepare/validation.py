"""Keep labelled images apart from a data set's test set, to choose a setting on (the latent size:
cfgs/grids/latent_size_choice.yaml) without looking at the images the final figures come from.

    python -m datasets.prepare validation ./Med-AD/RSNA --count 200 [--seed 0]

writes two data sets beside the folder, both with its training list: <FOLDER>_val, whose test set is `count` of its
test images (half normal, half abnormal, drawn by the seed), and <FOLDER>_test, whose test set is the rest. Both read
the folder's images/ and masks/ through symbolic links; the folder itself is not touched. Their learners are the same
(the same training images), so a grid with Exp.share_learners trains them once.
"""
import argparse
import json
import random
from pathlib import Path

from datasets.medad import read_data_json, read_split
from utils.atomic import atomic_write_text
from utils.errors import ArgumentParser, UserError, cli


def split_off(normal, abnormal, count, seed) -> tuple[dict, dict]:
    """(validation test lists, remaining test lists): count // 2 abnormal and count - count // 2 normal files, drawn
    by `seed`, each list keeping data.json's order."""
    want = {"0": count - count // 2, "1": count // 2}
    lists, chosen = {"0": normal, "1": abnormal}, {}
    for label, files in lists.items():
        if want[label] >= len(files):
            kind = "normal" if label == "0" else "abnormal"
            raise UserError(f"--count {count} takes {want[label]} {kind} test images, but the data set has "
                            f"{len(files)}: it would leave none to test on; lower --count")
        chosen[label] = set(random.Random(f"{seed}:{label}").sample(range(len(files)), want[label]))
    validation = {label: [f for i, f in enumerate(files) if i in chosen[label]] for label, files in lists.items()}
    rest = {label: [f for i, f in enumerate(files) if i not in chosen[label]] for label, files in lists.items()}
    return validation, rest


def write_part(source, target, train, test) -> None:
    """A data set folder `target` with data.json {train, test} whose images (and masks) are source's."""
    target.mkdir(parents=True)
    for folder in ("images", "masks"):
        if (source / folder).is_dir():
            (target / folder).symlink_to((source / folder).resolve(), target_is_directory=True)
    atomic_write_text(target / "data.json", json.dumps({"train": train, "test": test}, indent=1) + "\n")


def make_validation(directory, count, seed=0) -> tuple[Path, Path]:
    """Write <directory>_val and <directory>_test (module docstring); returns their paths."""
    directory = Path(directory)
    if count < 2:
        raise UserError(f"--count {count}: a validation set needs at least one normal and one abnormal image")
    split = read_split(directory)  # refuses a missing, malformed or inconsistent data.json
    train = read_data_json(directory)["train"]
    normal = [f for f, label in zip(split.test, split.test_labels) if label == 0]
    abnormal = [f for f, label in zip(split.test, split.test_labels) if label == 1]
    validation, rest = split_off(normal, abnormal, count, seed)
    base = directory.resolve()
    targets = base.with_name(base.name + "_val"), base.with_name(base.name + "_test")
    for target in targets:
        if target.exists():
            raise UserError(f"{target} exists already; remove it or keep it (a validation set is drawn once)")
    for target, test in zip(targets, (validation, rest)):
        write_part(base, target, train, test)
    return targets


@cli
def main(argv=None) -> None:
    parser = ArgumentParser(prog="python -m datasets.prepare validation", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a data set folder in the Med-AD layout, e.g. ./Med-AD/RSNA")
    parser.add_argument("--count", type=int, required=True, help="test images kept apart, half of them abnormal")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    args = parser.parse_args(argv)
    validation, rest = make_validation(args.folder, args.count, args.seed)
    print(f"wrote {validation} ({args.count} labelled test images to choose on) and {rest} (the rest of the test "
          f"set, for the final figures); use Data.dataset={validation.name} to choose, then "
          f"Data.dataset={rest.name}")


if __name__ == "__main__":
    main()
