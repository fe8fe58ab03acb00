"""Med-AD reading and the demo data set: exact preprocessing, every user error, deterministic synthetic data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.medad import dataset_dir, decode_threads, listed_twice, load_images, load_masks, parse_lists, \
    read_split
from datasets.prepare import __main__ as prepare_cli
from datasets.prepare import demo as demo_command
from datasets.prepare.demo import LESIONS, make_demo, make_image
from models import to_model_input
from tests.conftest import REPO, run_main, write_config
from utils.errors import UserError
from utils.run import config

rng = np.random.default_rng(0)


def write_medad(directory, train=("a.png", "b.png"), normal=("c.png",), abnormal=("d.png",), size=8, data=None):
    """A tiny Med-AD folder with random grayscale images; data overrides data.json."""
    (directory / "images").mkdir(parents=True)
    for name in {*train, *normal, *abnormal}:
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(directory / "images" / name)
    if data is None:
        data = {"train": {"0": list(train)}, "test": {"0": list(normal), "1": list(abnormal)}}
    (directory / "data.json").write_text(json.dumps(data))
    return directory


# ---- images ----

def test_load_images_matches_hand_computed_bilinear(tmp_path):
    (tmp_path / "images").mkdir()
    # 4 -> 2 pixels: PIL's bilinear filter has support 2 here, so the first output column weighs input columns
    # 0, 1, 2 by 0.75, 0.75, 0.25 (/1.75) and the second weighs 1, 2, 3 by 0.25, 0.75, 0.75.
    Image.fromarray(np.tile(np.array([0, 0, 255, 255], np.uint8), (4, 1))).save(tmp_path / "images" / "step.png")
    images = load_images(tmp_path, ["step.png"], 2)
    assert images.dtype == torch.uint8 and images.shape == (1, 1, 2, 2)
    expected = [round(0.25 * 255 / 1.75), round(1.5 * 255 / 1.75)]  # 36, 219
    assert images[0, 0].tolist() == [expected, expected]


def test_load_images_color_and_sizes_follow_pil(tmp_path):
    (tmp_path / "images").mkdir()
    color = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    Image.fromarray(color).save(tmp_path / "images" / "color.png")
    Image.fromarray(gray).save(tmp_path / "images" / "gray.png")
    images = load_images(tmp_path, ["color.png", "gray.png"], 16, workers=2)
    assert images.shape == (2, 1, 16, 16)
    for image, array in zip(images, [color, gray]):
        reference = Image.fromarray(array).convert("L").resize((16, 16), Image.Resampling.BILINEAR)
        assert np.array_equal(image[0].numpy(), np.asarray(reference))


def test_sixteen_bit_png_is_min_max_scaled(tmp_path):
    (tmp_path / "images").mkdir()
    ramp = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 200 + 1000)  # 1000..4000: above 8 bit, below 16
    Image.fromarray(ramp).save(tmp_path / "images" / "deep.png")
    image = load_images(tmp_path, ["deep.png"], 4)[0, 0].numpy()
    expected = np.round((ramp.astype(float) - 1000) * 255 / 3000).astype(np.uint8)
    assert np.array_equal(image, expected)


def test_to_model_input_mapping():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1)
    x = to_model_input(images)
    assert x.dtype == torch.float32 and x.device == images.device
    assert x.flatten().tolist() == pytest.approx([-1.0, 51 / 255 * 2 - 1, 1.0], abs=1e-7)
    assert x[0].item() == -1.0 and x[2].item() == 1.0


def test_corrupt_image_names_the_file(tmp_path):
    write_medad(tmp_path)
    (tmp_path / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UserError, match="b.png"):
        load_images(tmp_path, ["a.png", "b.png"], 8)


def test_truncated_image_names_the_file(tmp_path):
    write_medad(tmp_path, size=64)
    data = (tmp_path / "images" / "a.png").read_bytes()
    (tmp_path / "images" / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="a.png"):
        load_images(tmp_path, ["a.png"], 8)


def test_masks_aligned_and_missing_mask_is_empty(tmp_path):
    write_medad(tmp_path, size=8)
    (tmp_path / "masks").mkdir()
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 4:8] = 255  # rows 2-3, right half
    Image.fromarray(mask).save(tmp_path / "masks" / "d.png")
    masks = load_masks(tmp_path, ["c.png", "d.png"], 4)
    assert masks.dtype == torch.bool and masks.shape == (2, 1, 4, 4)
    assert not masks[0].any()
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1, 2:] = True  # nearest: output pixel i samples input pixel 2i + 1
    assert torch.equal(masks[1, 0], expected)
    assert read_split(tmp_path).has_masks


# ---- data.json ----

def test_read_split_orders_and_labels(tmp_path):
    write_medad(tmp_path, train=("t1.png", "t2.png"), normal=("n1.png", "n2.png"), abnormal=("x1.png",))
    split = read_split(tmp_path)
    assert split.train == ["t1.png", "t2.png"]
    assert split.test == ["n1.png", "n2.png", "x1.png"]
    assert split.test_labels == [0, 0, 1]
    assert split.directory == tmp_path and not split.has_masks


def test_unlabeled_is_accepted_and_ignored(tmp_path):
    data = {"train": {"0": ["a.png"], "unlabeled": {"0": ["u.png"], "1": ["v.png"]}},
            "test": {"0": ["c.png"], "1": ["d.png"]}}
    write_medad(tmp_path, data=data)
    split = read_split(tmp_path)
    assert split.train == ["a.png"] and "u.png" not in split.test


@pytest.mark.parametrize("data, message", [
    ({"train": {"0": ["a.png"]}, "test": {"0": ["c.png"]}}, r'test\."1" is missing'),
    ({"train": {"0": ["a.png"]}, "test": {"0": ["c.png"], "1": 3}}, r'test\."1" must be a list.*int'),
    ({"train": {"0": ["a.png", 7]}, "test": {"0": ["c.png"], "1": ["d.png"]}}, r'train\."0" must hold file names'),
    ({"train": {"0": []}, "test": {"0": ["c.png"], "1": ["d.png"]}}, r'train\."0" is empty'),
    ({"train": {"0": ["a.png"]}, "test": {"0": [], "1": ["d.png"]}}, r'test\."0" is empty'),
    ({"train": {"0": ["a.png"]}, "test": ["c.png"]}, r'"test" must be an object'),
    ({"train": {"0": ["a.png"]}}, r'"test" is missing'),
    ({"train": {"0": ["a.png"]}, "test": {"0": ["c.png"], "1": ["d.png"]}, "tset": {}}, r'unknown key "tset"'),
    ({"train": {"0": ["a.png"]}, "test": {"0": ["c.png"], "1": ["d.png"], "2": ["b.png"]}},
     r'unknown key "2" in "test"'),
    ([1, 2], "top level must be an object"),
    ({"train": {"0": ["a.png", "c.png"]}, "test": {"0": ["c.png"], "1": ["d.png"]}}, r"leakage.*c\.png"),
    ({"train": {"0": ["a.png"]}, "test": {"0": ["c.png", "d.png"], "1": ["d.png"]}}, r"label conflict.*d\.png"),
    # hold_out splits by position: a file twice in train could be trained on and be the normal reference at once
    ({"train": {"0": ["a.png", "b.png", "a.png"]}, "test": {"0": ["c.png"], "1": ["d.png"]}},
     r'a\.png is listed twice in train\."0"'),
    ({"train": {"0": ["a.png"]}, "test": {"0": ["c.png"], "1": ["d.png", "e.png", "d.png"]}},
     r'd\.png is listed twice in test\."1"'),
])
def test_schema_errors_name_the_key(tmp_path, data, message):
    write_medad(tmp_path, data=data)
    with pytest.raises(UserError, match=message):
        read_split(tmp_path)


def test_the_shipped_splits_list_no_file_twice():
    for path in (REPO / "datasets" / "splits").glob("*.json"):
        lists, problems = parse_lists(json.loads(path.read_text()), path)
        assert len(lists) == 3 and problems == [] and listed_twice(lists) == [], path


def test_malformed_json_gives_line_and_column(tmp_path):
    write_medad(tmp_path)
    (tmp_path / "data.json").write_text('{"train": {"0": ["a.png"]},\n "test": {"0": ["c.png"] "1": []}}')
    with pytest.raises(UserError, match=r"data\.json is not valid JSON.*line 2 column"):
        read_split(tmp_path)


def test_missing_data_json_and_folders(tmp_path):
    write_medad(tmp_path / "DS")
    (tmp_path / "DS" / "data.json").unlink()
    with pytest.raises(UserError, match=r"data\.json does not exist"):
        read_split(tmp_path / "DS")
    with pytest.raises(UserError, match="does not exist"):
        read_split(tmp_path / "nothing")
    with pytest.raises(UserError, match=r"data root .*absent does not exist; set Data\.root"):
        dataset_dir(tmp_path / "absent", "rsna")
    with pytest.raises(UserError, match=r"RSNA does not exist"):
        dataset_dir(tmp_path, "rsna")
    (tmp_path / "LAG").mkdir()
    assert dataset_dir(tmp_path, "lag") == tmp_path / "LAG"


def test_missing_images_are_counted_and_named(tmp_path):
    write_medad(tmp_path, train=("a.png", "b.png", "e.png"))
    (tmp_path / "images" / "b.png").unlink()
    (tmp_path / "images" / "e.png").unlink()
    with pytest.raises(UserError, match=r"2 files .* missing .*b\.png, e\.png"):
        read_split(tmp_path)


def test_decoding_uses_the_cpus_this_process_may_run_on(monkeypatch):
    """Under Slurm's --cpus-per-task=4 on a 64-core node, 4 threads, not 16."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 6, 7}, raising=False)
    assert decode_threads() == 4
    assert prepare_cli.parse_args(["rsna", "--src", "raw", "--out", "out"]).workers == 4  # conversion processes
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS and Windows have none
    assert decode_threads() == 16


# ---- demo ----

SMALL = dict(n_train=12, n_test_normal=6, n_test_abnormal=6, size=64)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo") / "demo", **SMALL)


def test_demo_is_deterministic(demo, tmp_path):
    again = make_demo(tmp_path / "again", **SMALL)
    assert (demo / "data.json").read_bytes() == (again / "data.json").read_bytes()
    names = sorted(p.name for p in (demo / "images").iterdir())
    assert names == sorted(p.name for p in (again / "images").iterdir())
    for folder in ("images", "masks"):
        for name in sorted(p.name for p in (demo / folder).iterdir())[::5]:
            assert (demo / folder / name).read_bytes() == (again / folder / name).read_bytes()
    other = make_demo(tmp_path / "other", seed=1, **SMALL)
    assert (other / "images" / names[0]).read_bytes() != (demo / "images" / names[0]).read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_demo_drawn_by_several_processes_is_the_same(demo, tmp_path):
    pooled = make_demo(tmp_path / "pooled", workers=2, **SMALL)
    assert (pooled / "data.json").read_bytes() == (demo / "data.json").read_bytes()
    for folder in ("images", "masks"):
        for path in sorted((demo / folder).iterdir()):
            assert (pooled / folder / path.name).read_bytes() == path.read_bytes()


def test_demo_command_line_sizes(tmp_path):
    result = subprocess.run([sys.executable, "-m", "datasets.prepare.demo", str(tmp_path / "d"), "--n-train", "5",
                             "--n-test", "3", "--size", "32"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    split = read_split(tmp_path / "d")
    assert (len(split.train), split.test_labels.count(0), split.test_labels.count(1)) == (5, 2, 1)
    assert Image.open(tmp_path / "d" / "images" / split.train[0]).size == (32, 32)
    bad = subprocess.run([sys.executable, "-m", "datasets.prepare.demo", str(tmp_path / "e"), "--n-train", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --n-train must be at least 1, got 0"


def test_demo_layout(demo):
    split = read_split(demo)
    assert (len(split.train), split.test_labels.count(0), split.test_labels.count(1)) == (12, 6, 6)
    abnormal = [name for name, label in zip(split.test, split.test_labels) if label]
    assert split.has_masks and sorted(p.name for p in (demo / "masks").iterdir()) == sorted(abnormal)
    assert {"opacity", "missing", "texture"} == {name.rsplit("_", 1)[1][:-4] for name in abnormal}
    images = load_images(demo, split.train + split.test, 64)
    assert images.shape == (24, 1, 64, 64) and images.float().std() > 20


@pytest.mark.parametrize("kind", LESIONS)
def test_demo_lesion_changes_only_the_masked_region(kind):
    # The same subject rendered with and without a lesion: the difference must sit inside the mask.
    for seed in range(4):
        healthy, no_mask = make_image(np.random.default_rng(seed), 64)
        sick, mask = make_image(np.random.default_rng(seed), 64, kind)
        assert no_mask is None and mask.dtype == bool
        assert 0.003 < mask.mean() < 0.05  # a lesion: not a speck, not a whole lung
        change = np.abs(sick.astype(float) - healthy)
        assert change[mask].mean() > 8  # visible: several grey levels on average
        assert change[~mask].mean() < 0.5 and change[mask].mean() > 20 * change[~mask].mean()


def test_demo_masks_match_files(demo):
    split = read_split(demo)
    abnormal = [name for name, label in zip(split.test, split.test_labels) if label]
    masks = load_masks(demo, split.test, 64)
    areas = masks.flatten(1).float().mean(1)
    assert (areas[:6] == 0).all() and (areas[6:] > 0.003).all() and (areas[6:] < 0.05).all()
    assert len(abnormal) == 6


def test_missing_demo_data_is_one_line_that_says_how_to_make_it(tmp_path):
    """The loader makes no data: a demo config without its data stops in one line naming the command."""
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "data", tmp_path / "run", Data={"dataset": "demo"})
    result = run_main("train.py", "--config", cfg)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: data set folder {tmp_path / 'data' / 'demo'} does not exist; make the "
                                     f"demo data with ./scripts/demo.sh or python -m datasets.prepare.demo "
                                     f"{tmp_path / 'data' / 'demo'}")
    assert not (tmp_path / "data").exists()
    make_demo(tmp_path / "data" / "demo", **SMALL)
    assert dataset_dir(tmp_path / "data", "demo") == tmp_path / "data" / "demo"


def test_demo_command_without_arguments_makes_the_demo_configs_data(tmp_path, monkeypatch, capsys):
    cfg = config.load(REPO / "cfgs" / "Demo_AE.yaml")
    assert Path(cfg.Data.root) / cfg.Data.dataset == demo_command.DEMO_DIR  # where the demo config reads
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo_command, "DEMO_TRAIN", 6)  # the default size, made smaller for the test
    demo_command.main([])
    assert capsys.readouterr().out == ("wrote the synthetic data set to data/demo: 6 normal training images, 100 "
                                       "normal and 100 abnormal test images with lesion masks, 128 px\n")
    split = read_split(tmp_path / "data" / "demo")
    assert (len(split.train), split.test_labels.count(0), split.test_labels.count(1)) == (6, 100, 100)
    before = (tmp_path / "data" / "demo" / "data.json").stat().st_mtime_ns
    demo_command.main([])
    assert "data/demo already holds a data set (data.json); left as it is" in capsys.readouterr().out
    assert (tmp_path / "data" / "demo" / "data.json").stat().st_mtime_ns == before


def test_make_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="busy.*not empty"):
        make_demo(tmp_path / "busy", **SMALL)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_hold_out_draws_a_seeded_share_and_refuses_too_few():
    from datasets.medad import hold_out
    files = [f"{i:03d}.png" for i in range(100)]
    train, reference = hold_out(files, 0.1, seed=1, batch_size=16)
    assert len(reference) == 10 and len(train) == 90
    assert sorted(train + reference) == files and not set(train) & set(reference)
    assert train == sorted(train) and reference == sorted(reference)  # data.json's order kept
    assert hold_out(files, 0.1, seed=1, batch_size=16) == (train, reference)
    assert hold_out(files, 0.1, seed=2, batch_size=16)[1] != reference
    assert hold_out(files, 0.0, seed=1, batch_size=16) == (files, [])
    with pytest.raises(UserError, match="holds out 2 of 100 .* at least 4"):
        hold_out(files, 0.02, seed=1, batch_size=16)
    with pytest.raises(UserError, match="leaves 50 of 100 .* fewer than 2 batches of Solver.bs=32"):
        hold_out(files, 0.5, seed=1, batch_size=32)
