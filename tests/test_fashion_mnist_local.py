"""Fashion-MNIST local-defect sets (--anomalies local): the split, the defects and their masks, determinism, the
loader, and the semantic set left as it was."""
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from datasets.prepare import __main__ as prepare
from datasets.prepare import defects, fashion_mnist
from datasets.prepare.defects import KINDS, MIN_MEAN_CHANGE, MIN_PIXELS, SUPPORT_LEVEL, THRESHOLD, draw_defect
from datasets.prepare.fashion_mnist import (make_local_set, make_one_class, parse_set_name, select, select_local,
                                            set_name)
from datasets.medad import load_images, load_masks, read_split
from tests.test_fashion_mnist import write_source
from utils.errors import UserError

PER_CLASS = {"train": 6, "test": 12}  # 12 test images: 6 defective, two of each kind
NORMAL = 4


def garment(rng, label):
    """A 28 x 28 garment-like image: a textured ellipse on a black background."""
    rows, cols = np.mgrid[:28, :28]
    axes = 7 + label % 4 + rng.uniform(0, 2), 5 + label % 3 + rng.uniform(0, 2)
    inside = ((rows - 14) / axes[0]) ** 2 + ((cols - 14) / axes[1]) ** 2 <= 1
    return np.where(inside, rng.integers(60, 231, (28, 28)), 0).astype(np.uint8)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small Fashion-MNIST folder of garment-like images, labels in shuffled order; and its arrays."""
    folder = tmp_path_factory.mktemp("garments")
    arrays = write_source(folder, PER_CLASS, lambda rng, labels: np.stack([garment(rng, label) for label in labels]))
    return folder, arrays


@pytest.fixture(scope="module")
def local_set(source, tmp_path_factory):
    return make_local_set(tmp_path_factory.mktemp("local"), NORMAL, seed=5, source=source[0])


def png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L" and image.size == (28, 28)
        return np.asarray(image)


def index_of(name):
    return int(name.split("_")[1].removesuffix(".png"))


def kind_of(name):
    return name.removesuffix(".png").split("_")[2]


def tree(folder) -> dict:
    """Relative path -> sha1 of every file under folder."""
    return {str(path.relative_to(folder)): hashlib.sha1(path.read_bytes()).hexdigest()
            for path in sorted(Path(folder).rglob("*")) if path.is_file()}


def lists(folder):
    data = json.loads((folder / "data.json").read_text())
    return data["train"]["0"], data["test"]["0"], data["test"]["1"]


def test_set_names_are_written_and_read_back_by_one_pair_of_functions():
    """The studies pair a local set with its semantic twin by these names (studies/common.py, training_set)."""
    assert (set_name(4), set_name(4, "local")) == ("FMNIST_c4", "FMNIST_local_c4")
    assert [parse_set_name(set_name(c, kind)) for c in (0, 9) for kind in ("semantic", "local")] == \
        [(0, "semantic"), (0, "local"), (9, "semantic"), (9, "local")]
    assert [parse_set_name(name) for name in ("MNIST_c1", "FMNIST_local_c10", "FMNIST_c4_extra", "FMNIST_local")] \
        == [None] * 4


def test_split_keeps_every_test_image_once(source, local_set, tmp_path):
    _, arrays = source
    train, normal, defective = lists(local_set)
    assert local_set.name == set_name(NORMAL, "local") == f"FMNIST_local_c{NORMAL}"
    class_test = np.flatnonzero(arrays["test"][1] == NORMAL).tolist()
    assert sorted(map(index_of, normal + defective)) == class_test  # none dropped, none doubled
    assert (len(normal), len(defective)) == (6, 6) and not {*map(index_of, normal)} & {*map(index_of, defective)}
    assert all(name == f"test_{index_of(name):05d}.png" for name in normal)
    for name in normal:
        assert np.array_equal(png(local_set / "images" / name), arrays["test"][0][index_of(name)])
    # The training set is the semantic set's, file for file and byte for byte.
    semantic = make_one_class(tmp_path, NORMAL, seed=5, source=source[0])
    assert train == lists(semantic)[0]
    assert all((local_set / "images" / n).read_bytes() == (semantic / "images" / n).read_bytes() for n in train)
    assert sorted(p.name for p in (local_set / "images").iterdir()) == sorted(train + normal + defective)
    assert sorted(p.name for p in (local_set / "masks").iterdir()) == sorted(defective)  # none for normal images


def test_select_local_halves_and_balances_the_kinds():
    labels = np.array([3, 1, 3, 3, 0, 3, 3, 3, 3, 2, 3])  # 8 of class 3
    normal, defective, kinds = select_local(labels, 3, seed=2)
    assert len(defective) == 4 and sorted(normal.tolist() + defective.tolist()) == np.flatnonzero(labels == 3).tolist()
    assert sorted(Counter(kinds).values()) == [1, 1, 2]
    _, odd, _ = select_local(np.array([5, 5, 5]), 5, seed=0)
    assert len(odd) == 1


def test_defects_change_exactly_their_mask(source, local_set):
    _, arrays = source
    for name in lists(local_set)[2]:
        original = arrays["test"][0][index_of(name)].astype(int)
        drawn = png(local_set / "images" / name).astype(int)
        mask_values = png(local_set / "masks" / name)
        assert set(np.unique(mask_values)) <= {0, 255}
        mask = mask_values > 0
        change = np.abs(drawn - original)
        assert mask.sum() >= MIN_PIXELS and change[mask].mean() >= MIN_MEAN_CHANGE, name
        assert (change[mask] > THRESHOLD).all() and (change[~mask] == 0).all(), name


def donor_window_matches(pixels, mask, donors) -> bool:
    """Whether the masked pixels equal the same pixels of some window of some donor image."""
    rows, cols = np.nonzero(mask)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    want, where = pixels[box], mask[box]
    windows = sliding_window_view(donors, where.shape, axis=(1, 2))  # donors, y, x, h, w
    return bool(((windows == want) | ~where).all(axis=(-2, -1)).any())


def test_each_kind_occurs_and_is_what_it_says(source, local_set):
    _, arrays = source
    defective = lists(local_set)[2]
    assert Counter(map(kind_of, defective)) == {kind: 2 for kind in KINDS}
    train_images, train_labels = arrays["train"]
    for name in defective:
        original = arrays["test"][0][index_of(name)].astype(int)
        drawn = png(local_set / "images" / name).astype(int)
        mask = png(local_set / "masks" / name) > 0
        on_garment = original > SUPPORT_LEVEL
        if kind_of(name) == "blob":  # only brighter or only darker, and only on the garment
            signs = np.sign(drawn - original)[mask]
            assert (signs == signs[0]).all() and on_garment[mask].all(), name
        elif kind_of(name) == "missing":
            assert (drawn[mask] == defects.BACKGROUND).all() and on_garment[mask].all(), name
        else:  # a piece of a training image of another class, centred on the garment
            assert donor_window_matches(drawn, mask, train_images[train_labels != NORMAL]), name
            assert not donor_window_matches(drawn, mask, train_images[train_labels == NORMAL]), name
            assert on_garment[mask].mean() > 0.3, name


def test_same_seed_same_bytes_other_seed_other_defects(source, local_set, tmp_path):
    again = make_local_set(tmp_path / "again", NORMAL, seed=5, source=source[0])
    assert tree(again) == tree(local_set)
    other = make_local_set(tmp_path / "other", NORMAL, seed=6, source=source[0])
    assert lists(other)[0] == lists(local_set)[0]
    assert lists(other)[2] != lists(local_set)[2]


def test_the_seed_reaches_the_defects(source, monkeypatch, tmp_path):
    """With the same images and kinds chosen, another seed still draws other defects."""
    chosen = select_local(source[1]["test"][1], NORMAL, seed=5)
    monkeypatch.setattr(fashion_mnist, "select_local", lambda *args: chosen)
    one, two = (make_local_set(tmp_path / str(seed), NORMAL, seed=seed, source=source[0]) for seed in (5, 6))
    assert lists(one) == lists(two)
    assert all(not np.array_equal(png(one / "masks" / name), png(two / "masks" / name)) for name in lists(one)[2])


def test_rerun_with_another_seed_leaves_no_stale_files(source, local_set, tmp_path):
    make_local_set(tmp_path, NORMAL, seed=6, source=source[0])
    folder = make_local_set(tmp_path, NORMAL, seed=5, source=source[0])
    assert tree(folder) == tree(local_set)


def test_loader_reads_masks_aligned_with_images(source, local_set):
    _, arrays = source
    split = read_split(local_set)
    assert split.has_masks and split.test_labels == [0] * 6 + [1] * 6
    images, masks = load_images(local_set, split.test, 28), load_masks(local_set, split.test, 28)
    for name, image, mask, label in zip(split.test, images, masks, split.test_labels):
        original = arrays["test"][0][index_of(name)].astype(int)
        changed = np.abs(image[0].numpy().astype(int) - original) > THRESHOLD
        assert np.array_equal(mask[0].numpy(), changed) and bool(mask.any()) == bool(label)
    masks = load_masks(local_set, split.test, 64)  # the study's size: nearest resize keeps them binary and placed
    assert masks.shape == (12, 1, 64, 64) and not masks[:6].any() and all(m.any() for m in masks[6:])


def test_semantic_set_is_unchanged(source, tmp_path, capsys):
    folder = make_one_class(tmp_path, NORMAL, seed=3, source=source[0])
    _, arrays = source
    chosen = select(arrays["train"][1], arrays["test"][1], NORMAL, 3)
    names = {key: [f"{key[0]}_{index:05d}.png" for index in indices] for key, indices in chosen.items()}
    expected = {"train": {"0": names["train", "0"]}, "test": {"0": names["test", "0"], "1": names["test", "1"]}}
    assert (folder / "data.json").read_text() == json.dumps(expected, indent=1) + "\n"
    for name in [name for listed in names.values() for name in listed]:
        encoded = io.BytesIO()
        Image.fromarray(arrays[name.split("_")[0]][0][index_of(name)]).save(encoded, format="PNG")
        assert (folder / "images" / name).read_bytes() == encoded.getvalue()
    assert sorted(p.name for p in folder.iterdir()) == ["data.json", "images"]  # no masks
    before = tree(folder)
    make_local_set(tmp_path, NORMAL, seed=3, source=source[0])  # the local set beside it does not touch it
    prepare.main(["fmnist", "--class", str(NORMAL), "--out", str(tmp_path), "--src", str(source[0]), "--seed", "3"])
    assert tree(folder) == before
    fashion_mnist.main(["--class", str(NORMAL), "--out", str(tmp_path / "explicit"), "--src", str(source[0]),
                        "--seed", "3", "--anomalies", "semantic"])
    assert tree(tmp_path / "explicit" / folder.name) == before
    assert capsys.readouterr().out.count("test 12 normal / 12 abnormal (seed 3)") == 2


def test_a_kind_that_cannot_show_gives_way():
    rng = np.random.default_rng(0)
    black = np.where(garment(rng, 2) > 0, rng.integers(17, 27, (28, 28)), 0).astype(np.uint8)  # a black garment
    donors = np.stack([garment(rng, label) for label in range(5)])
    pixels, mask, kind = draw_defect(np.random.default_rng(1), black, "missing", donors)
    assert kind != "missing" and mask.sum() >= MIN_PIXELS
    assert (np.abs(pixels.astype(int) - black)[mask] > THRESHOLD).all() and (pixels[~mask] == black[~mask]).all()
    blank = np.zeros((28, 28), np.uint8)
    with pytest.raises(UserError, match="no visible defect of any kind"):
        draw_defect(np.random.default_rng(1), blank, "blob", np.zeros((2, 28, 28), np.uint8))


def test_cli(source, tmp_path, capsys):
    prepare.main(["fmnist", "--class", "4", "--anomalies", "local", "--out", str(tmp_path), "--src",
                  str(source[0]), "--seed", "5"])
    assert (f"FMNIST_local_c4: train 6 normal (Coat); test 6 normal / 6 with a local defect (2 blob, 2 patch, "
            f"2 missing) (seed 5)") in capsys.readouterr().out
    for bad, message in ((["--anomalies", "global"], "invalid choice"), (["--seed", "-1"], "--seed must be at least")):
        with pytest.raises(SystemExit) as err:
            prepare.main(["fmnist", "--class", "4", "--out", str(tmp_path), "--src", str(source[0]), *bad])
        assert err.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(not Path(fashion_mnist.SOURCE).is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_real_images():
    """The study's classes: 500 / 500 test images, kinds 167 / 167 / 166; defects on real garments obey the rules."""
    train_images, train_labels = fashion_mnist.load_split(fashion_mnist.SOURCE, "train")
    test_images, test_labels = fashion_mnist.load_split(fashion_mnist.SOURCE, "test")
    for normal_class in (4, 6, 9):
        normal, defective, kinds = select_local(test_labels, normal_class, seed=0)
        assert (len(normal), len(defective)) == (500, 500)
        assert sorted(Counter(kinds).values()) == [166, 167, 167]
        donors = train_images[train_labels != normal_class]
        for index, kind in list(zip(defective, kinds))[:30]:
            image = test_images[index]
            pixels, mask, _ = draw_defect(np.random.default_rng([0, index]), image, kind, donors)
            change = np.abs(pixels.astype(int) - image)
            assert mask.sum() >= MIN_PIXELS and (change[mask] > THRESHOLD).all() and (change[~mask] == 0).all()
