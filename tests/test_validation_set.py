"""python -m datasets.prepare validation: labelled images kept apart from the test set to choose a setting on, and
the grid that chooses the latent size with them (cfgs/grids/latent_size_choice.yaml)."""
import json

import pytest

from datasets.medad import read_data_json, read_split
from datasets.prepare import __main__ as prepare_cli
from datasets.prepare.demo import make_demo
from datasets.prepare.validation import make_validation
from tests.conftest import REPO
from utils.errors import UserError
from utils.grid import grid as grids
from utils.run import config


@pytest.fixture
def dataset(tmp_path):
    make_demo(tmp_path / "tiny", seed=1, n_train=16, n_test_normal=8, n_test_abnormal=8, size=32)
    return tmp_path / "tiny"


def by_label(split):
    return {label: [f for f, y in zip(split.test, split.test_labels) if y == label] for label in (0, 1)}


def test_the_test_set_is_split_in_two_over_the_same_training_images(dataset):
    before = json.loads((dataset / "data.json").read_text())
    prepare_cli.main(["validation", str(dataset), "--count", "6", "--seed", "2"])
    original = by_label(read_split(dataset))
    validation, rest = read_split(dataset.with_name("tiny_val")), read_split(dataset.with_name("tiny_test"))
    assert validation.train == rest.train == read_split(dataset).train
    assert read_data_json(dataset.with_name("tiny_val"))["train"] == before["train"]
    for label, count in ((0, 3), (1, 3)):  # half of --count abnormal
        kept, left = by_label(validation)[label], by_label(rest)[label]
        assert len(kept) == count and not set(kept) & set(left)
        assert sorted(kept + left) == sorted(original[label])
        assert kept == [f for f in original[label] if f in kept]  # data.json's order
    assert validation.has_masks and rest.has_masks  # through the links, to the same files
    assert (dataset.with_name("tiny_val") / "images").resolve() == (dataset / "images").resolve()
    assert json.loads((dataset / "data.json").read_text()) == before  # the folder itself untouched


def test_the_draw_is_the_seed_s(dataset, tmp_path):
    make_validation(dataset, 4, seed=5)
    again = tmp_path / "again" / "tiny"
    make_demo(again, seed=1, n_train=16, n_test_normal=8, n_test_abnormal=8, size=32)
    make_validation(again, 4, seed=5)
    assert read_split(dataset.with_name("tiny_val")).test == read_split(again.with_name("tiny_val")).test


@pytest.mark.parametrize("count, message", [(16, "takes 8 normal test images, but the data set has 8"),
                                            (1, "needs at least one normal and one abnormal image")])
def test_a_count_that_leaves_nothing_is_refused(dataset, count, message):
    with pytest.raises(UserError, match=message):
        make_validation(dataset, count)
    assert not dataset.with_name("tiny_val").exists() and not dataset.with_name("tiny_test").exists()


def test_a_second_draw_is_one_line_and_changes_nothing(dataset, capsys):
    make_validation(dataset, 4, seed=0)
    first = (dataset.with_name("tiny_val") / "data.json").read_text()
    with pytest.raises(SystemExit) as exit_:
        prepare_cli.main(["validation", str(dataset), "--count", "4", "--seed", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tiny_val exists already" in err
    assert (dataset.with_name("tiny_val") / "data.json").read_text() == first


def test_the_latent_size_grid_is_the_recommended_setting_at_four_sizes_with_shared_learners():
    chosen = grids.load(REPO / "cfgs" / "grids" / "latent_size_choice.yaml", ["Data.dataset=RSNA_val"])
    final = grids.load(REPO / "cfgs" / "grids" / "latent_size_choice.yaml", ["Data.dataset=RSNA_test"])
    assert [cell.cfg.Model.ls for cell in chosen.cells] == [cell.cfg.Model.ls for cell in final.cells] == [16, 4, 8, 32]
    recommended = config.load(REPO / "cfgs" / "RSNA_AE.yaml", ["cfgs/presets/recommended.yaml"])
    for cell in chosen.cells + final.cells:
        assert (cell.cfg.Solver.Lambda, cell.cfg.Solver.precise_bn, cell.cfg.Data.holdout) == \
            (recommended.Solver.Lambda, recommended.Solver.precise_bn, recommended.Data.holdout)
        assert cell.cfg.Model.num_learners == 3 and cell.cfg.Exp.share_learners == "./runs/shared_learners"
    # one folder per data set and size, so the test set's cells never overwrite the validation set's
    assert len({cell.run_dir for cell in chosen.cells + final.cells}) == 8
