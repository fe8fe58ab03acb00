"""Fashion-MNIST one-class sets: the IDX reader, the split, the written files, and the errors."""
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.medad import load_images, read_split
from datasets.prepare import fashion_mnist
from datasets.prepare.fashion_mnist import FILES, load_split, main, make_one_class, read_idx, select
from tests.conftest import run_cli
from utils.errors import UserError

PER_CLASS = {"train": 5, "test": 3}


def write_idx(path, array, type_code=0x08):
    """A gzipped IDX file written by hand: magic (0, 0, type, ndim), big-endian uint32 dims, big-endian data."""
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def write_source(folder, per_class, draw):
    """Fashion-MNIST's four IDX files in `folder`: per_class[split] images of each class, labels in shuffled order,
    images from draw(rng, labels); returns {split: (images, labels)}."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, (image_file, label_file) in FILES.items():
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class[split]))
        images = draw(rng, labels)
        write_idx(folder / image_file, images)
        write_idx(folder / label_file, labels)
        arrays[split] = images, labels
    return arrays


@pytest.fixture(scope="module")
def fake_source(tmp_path_factory):
    """A small Fashion-MNIST folder: 5 training and 3 test images per class, labels in shuffled order."""
    source = tmp_path_factory.mktemp("fmnist")
    arrays = write_source(source, PER_CLASS,
                          lambda rng, labels: rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8))
    return source, arrays


def index_of(name):
    return int(Path(name).stem.split("_")[1])


def test_idx_reader_round_trips_every_type(tmp_path):
    for code, dtype in fashion_mnist.IDX_TYPES.items():
        array = (np.arange(24).reshape(2, 3, 4) - 5).astype(np.dtype(dtype).newbyteorder("="))
        if code == 0x08:
            array = array + 5
        write_idx(tmp_path / "a.gz", array, code)
        assert np.array_equal(read_idx(tmp_path / "a.gz"), array)


def test_one_class_set(fake_source, tmp_path):
    source, arrays = fake_source
    folder = make_one_class(tmp_path / "out", 4, seed=1, source=source)
    assert folder == tmp_path / "out" / "FMNIST_c4"
    data = json.loads((folder / "data.json").read_text())
    train, normal, abnormal = data["train"]["0"], data["test"]["0"], data["test"]["1"]
    assert (len(train), len(normal), len(abnormal)) == (5, 3, 3)
    assert all(name.startswith("train_") for name in train) and all(n.startswith("test_") for n in normal + abnormal)
    assert all(arrays["train"][1][index_of(name)] == 4 for name in train)
    assert all(arrays["test"][1][index_of(name)] == 4 for name in normal)
    assert all(arrays["test"][1][index_of(name)] != 4 for name in abnormal)
    assert len(set(train + normal + abnormal)) == 11  # no file in two lists
    assert sorted(os.listdir(folder / "images")) == sorted(train + normal + abnormal)
    for split, names in (("train", train), ("test", normal + abnormal)):
        for name in names:  # every PNG holds exactly the pixels of its IDX record
            with Image.open(folder / "images" / name) as image:
                assert image.mode == "L" and image.size == (28, 28)
                assert np.array_equal(np.asarray(image), arrays[split][0][index_of(name)])
    split = read_split(folder)  # the loader accepts it as a Med-AD data set
    assert split.test_labels == [0] * 3 + [1] * 3 and load_images(folder, split.train, 32).shape == (5, 1, 32, 32)


def test_the_seed_decides_the_abnormal_images(fake_source, tmp_path):
    source, _ = fake_source
    lists = [json.loads((make_one_class(tmp_path / name, 0, seed=seed, source=source) / "data.json").read_text())
             for name, seed in (("a", 7), ("b", 7), ("c", 8))]
    assert lists[0] == lists[1]
    assert lists[0]["test"]["1"] != lists[2]["test"]["1"] and lists[0]["train"] == lists[2]["train"]


def test_select_draws_with_default_rng():
    train_labels = np.array([0, 1, 0, 2])
    test_labels = np.array([1, 0, 2, 3, 0, 4, 5])
    chosen = select(train_labels, test_labels, 0, seed=3)
    others = np.flatnonzero(test_labels != 0)
    expected = np.sort(np.random.default_rng(3).choice(others, size=2, replace=False))
    assert chosen["train", "0"].tolist() == [0, 2] and chosen["test", "0"].tolist() == [1, 4]
    assert chosen["test", "1"].tolist() == expected.tolist()


def test_rerun_resumes_and_keeps_existing_files(fake_source, tmp_path):
    source, _ = fake_source
    folder = make_one_class(tmp_path, 2, seed=0, source=source)
    kept = sorted((folder / "images").iterdir())[0]
    os.utime(kept, (1, 1))
    lost = sorted((folder / "images").iterdir())[-1]
    lost.unlink()
    (folder / "images" / ".test_00001.png.tmp").write_bytes(b"half a file")
    (folder / "data.json").unlink()  # as if killed before the end
    make_one_class(tmp_path, 2, seed=0, source=source)
    assert kept.stat().st_mtime == 1 and lost.is_file() and (folder / "data.json").is_file()
    assert not list((folder / "images").glob(".*"))


def test_missing_or_garbled_source_is_one_clear_error(fake_source, tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        make_one_class(tmp_path / "out", 4, source=tmp_path / "nowhere")
    source, _ = fake_source
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(source):
        (broken / name).write_bytes((source / name).read_bytes())
    with pytest.raises(UserError, match="class must be 0-9"):
        make_one_class(tmp_path / "out", 10, source=broken)
    (broken / FILES["test"][1]).write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="cannot be decompressed"):
        make_one_class(tmp_path / "out", 4, source=broken)
    write_idx(broken / FILES["test"][1], np.zeros(3, np.uint8), type_code=0x07)
    with pytest.raises(UserError, match="bad magic number"):
        load_split(broken, "test")
    with gzip.open(broken / FILES["test"][1], "wb") as handle:
        handle.write(bytes([0, 0, 8, 1]) + np.asarray([30], ">u4").tobytes() + bytes(12))
    with pytest.raises(UserError, match="holds 12 data bytes but its header announces shape"):
        load_split(broken, "test")
    (broken / FILES["test"][0]).unlink()
    with pytest.raises(UserError, match="not found; install Fashion-MNIST with: apt-get"):
        load_split(broken, "test")


def test_cli(fake_source, tmp_path, capsys):
    source, _ = fake_source
    main(["--class", "4", "--out", str(tmp_path), "--src", str(source), "--seed", "1"])
    assert "FMNIST_c4: train 5 normal (Coat); test 3 normal / 3 abnormal (seed 1)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        main(["--class", "12", "--out", str(tmp_path), "--src", str(source)])
    assert err.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_cli_missing_source_is_one_line_without_traceback(tmp_path):
    done = run_cli("-m", "datasets.prepare.fashion_mnist", "--class", "4", "--out", tmp_path, "--src",
                   tmp_path / "none")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "apt-get install dataset-fashion-mnist" in done.stderr


@pytest.mark.skipif(not Path(fashion_mnist.SOURCE).is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_real_counts():
    """The installed files: 60000 / 10000 labelled 28 x 28 images; one class gives 6000 / 1000 / 1000."""
    labels = {split: read_idx(Path(fashion_mnist.SOURCE) / files[1]) for split, files in FILES.items()}
    assert (len(labels["train"]), len(labels["test"])) == (60000, 10000)
    chosen = select(labels["train"], labels["test"], 4, seed=0)
    assert [len(chosen[key]) for key in (("train", "0"), ("test", "0"), ("test", "1"))] == [6000, 1000, 1000]
    assert read_idx(Path(fashion_mnist.SOURCE) / FILES["test"][0]).shape == (10000, 28, 28)


def test_prepare_has_the_fmnist_target(fake_source, tmp_path):
    """python -m datasets.prepare fmnist ... is the same as python -m datasets.prepare.fashion_mnist ..."""
    from datasets.prepare import __main__ as prepare
    source, _ = fake_source
    prepare.main(["fmnist", "--class", "6", "--out", str(tmp_path / "a"), "--src", str(source), "--seed", "3"])
    make_one_class(tmp_path / "b", 6, seed=3, source=source)
    assert (tmp_path / "a" / "FMNIST_c6" / "data.json").read_text() == \
        (tmp_path / "b" / "FMNIST_c6" / "data.json").read_text()
