"""datasets.benchmark: the shipped splits load, and describe() tells a benchmark split from a changed one."""
import json
from pathlib import Path

import pytest

from datasets import benchmark
from datasets.medad import Split
from utils.errors import UserError

SPLITS = Path(__file__).resolve().parents[1] / "datasets" / "splits"
TRAIN, NORMAL, ABNORMAL = ("train", "0"), ("test", "0"), ("test", "1")


def shipped_lists(name):
    """The three lists straight from the JSON file, as copies that a test may change."""
    data = json.loads((SPLITS / f"{name}.json").read_text())
    return {TRAIN: list(data["train"]["0"]), NORMAL: list(data["test"]["0"]), ABNORMAL: list(data["test"]["1"])}


@pytest.mark.parametrize("name", benchmark.BENCHMARKS)
def test_each_shipped_split_is_recognised_as_itself(name):
    lists = shipped_lists(name)
    assert benchmark.load(name) == lists
    match = benchmark.describe(lists)
    assert match.exact and match.benchmark == name and match.label == f"benchmark {name}"
    assert str(match) == f"{name}: the Med-AD benchmark split"
    lists[TRAIN].reverse()  # the order of a list does not change the split
    assert benchmark.describe(lists).exact


def test_recognised_by_stem_whatever_the_extension():
    lists = {key: [name.replace(".jpg", ".png") for name in names] for key, names in shipped_lists("LAG").items()}
    assert str(benchmark.describe(lists)) == "LAG: the Med-AD benchmark split"


def test_two_files_moved_from_train_to_test():
    lists = shipped_lists("RSNA")
    moved = [lists[TRAIN].pop(10), lists[TRAIN].pop(20)]
    lists[NORMAL] += moved
    match = benchmark.describe(lists)
    assert not match.exact and match.benchmark == "RSNA" and match.label == "custom"
    assert match.moved == {("train normal", "test normal"): sorted(moved)}
    assert not (match.missing or match.added or match.repeated)
    assert str(match) == ("custom split, closest to the Med-AD RSNA split: 2 moved from train normal to test normal "
                          f"({', '.join(sorted(moved))})")


def test_added_missing_relabelled_leaked_and_repeated_files_are_each_counted():
    lists = shipped_lists("BrainTumor")
    relabelled = lists[NORMAL].pop(0)
    lists[ABNORMAL].append(relabelled)                        # normal -> abnormal
    gone = lists[ABNORMAL][:4]
    lists[ABNORMAL] = lists[ABNORMAL][4:] + ["extra_1.jpg"]   # 4 missing, 1 added
    unlabeled = json.loads((SPLITS / "BrainTumor.json").read_text())["train"]["unlabeled"]["0"][0]
    lists[TRAIN].append(unlabeled)                            # from the unused pool: added
    leaked = lists[TRAIN][0]
    lists[NORMAL].append(leaked)                              # in train and test
    lists[TRAIN].append(lists[TRAIN][5])                      # listed twice
    match = benchmark.describe(lists)
    assert match.benchmark == "BrainTumor" and not match.exact
    assert match.missing == sorted(gone) and match.added == sorted(["extra_1.jpg", unlabeled])
    assert match.moved == {("test normal", "test abnormal"): [relabelled],
                           ("train normal", "train normal + test normal"): [leaked]}
    assert match.repeated == [lists[TRAIN][5]]
    text = str(match)
    assert "4 of its 2200 files missing" in text and "2 added" in text and "1 listed twice" in text


def test_closest_benchmark_and_no_benchmark():
    rsna, vin = shipped_lists("RSNA"), shipped_lists("VinCXR")
    mixed = {TRAIN: rsna[TRAIN][:5] + vin[TRAIN], NORMAL: vin[NORMAL], ABNORMAL: vin[ABNORMAL]}
    match = benchmark.describe(mixed)
    assert match.benchmark == "VinCXR" and match.added == sorted(rsna[TRAIN][:5]) and not match.missing
    none = benchmark.describe({TRAIN: ["a.png"], NORMAL: ["b.png"], ABNORMAL: ["c.png"]})
    assert none.benchmark is None and none.label == "custom" and "no file in common" in str(none)
    assert benchmark.describe({}).benchmark is None  # a data.json with no valid list (datasets.check goes on)


def test_split_lists_round_trip():
    lists = shipped_lists("LAG")
    split = Split(Path("."), lists[TRAIN], lists[NORMAL] + lists[ABNORMAL],
                  [0] * len(lists[NORMAL]) + [1] * len(lists[ABNORMAL]), has_masks=False)
    assert split.lists == lists


def test_unknown_benchmark_and_bad_split_file(tmp_path):
    with pytest.raises(UserError, match="no shipped benchmark split 'MNIST'"):
        benchmark.load("MNIST")
    (tmp_path / "bad.json").write_text(json.dumps({"train": {"0": ["a.png"]}, "test": {"0": []}}))
    with pytest.raises(UserError, match=r"has no list of file names at \['test'\]\['1'\]"):
        benchmark.read_lists(tmp_path / "bad.json")
