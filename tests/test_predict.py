"""predict.py scores new files exactly as eval.py scores the test set; scripts/dev/readme_figures.py draws from a real
run and shows what predict.py writes."""
import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from matplotlib.text import Text
from PIL import Image

import eval as evaluate
import predict
import train
from datasets.dicom import dicom_to_array
from datasets.medad import read_split
from tests.conftest import load_script, run_main, write_config
from utils.method.reference import IMAGE_SCORES

readme_figures = load_script("dev/readme_figures")

# Bundled with pydicom; its get_testdata_file helpers may download, so the path is spelled out.
CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


@pytest.fixture(scope="module")
def tiny_run(tiny_root, tmp_path_factory):
    """A trained (1 epoch, 2 learners) and evaluated run on the tiny data set."""
    folder = tmp_path_factory.mktemp("predict")
    cfg = write_config(folder / "c.yaml", tiny_root, folder / "run", Solver={"num_epoch": 1})
    train.main(["--config", str(cfg)])
    evaluate.main(["--config", str(cfg)])
    return folder / "run"


@pytest.fixture(scope="module")
def held_out_run(tiny_root, tmp_path_factory):
    """A trained (1 epoch, 2 learners) run whose normal reference is held out of training: p-values and --fpr."""
    folder = tmp_path_factory.mktemp("held_out")
    cfg = write_config(folder / "c.yaml", tiny_root, folder / "run", Solver={"num_epoch": 1}, Data={"holdout": 0.25})
    train.main(["--config", str(cfg)])
    return folder / "run"


def read_csv(path, key):
    return {row[key]: row for row in csv.DictReader(open(path))}


def test_predict_equals_eval_and_reads_jpeg_and_dicom(tiny_root, tiny_run, tmp_path, capsys):
    images = tiny_root / "tiny" / "images"
    tested = ["test_normal_0000.png", "test_normal_0001.png", "test_abnormal_0000_opacity.png"]
    folder = tmp_path / "new"
    (folder / "more").mkdir(parents=True)
    for name in tested:
        shutil.copy(images / name, folder / name)
    shutil.copy(images / tested[0], folder / "more" / tested[0])  # same stem twice: overlays must not collide
    Image.open(images / tested[1]).convert("RGB").save(folder / "photo.jpg", quality=95)
    pydicom.dcmread(CT_SMALL).save_as(folder / "more" / "ct.dcm")
    Image.fromarray(dicom_to_array(CT_SMALL)).save(folder / "ct_prepared.png")  # what datasets.prepare writes
    (folder / "notes.txt").write_text("not an image")  # unknown suffixes in folders are skipped

    predict.main(["--run", str(tiny_run), str(folder), "--out", str(tmp_path / "out")])

    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert list(rows[0]) == ["file", *IMAGE_SCORES] and len(rows) == 7  # an in-sample reference: no p-values
    by_file = {Path(row["file"]).relative_to(folder).as_posix(): row for row in rows}
    reference = read_csv(tiny_run / "scores.csv", "file")  # eval.py: the same images through load_images
    for name in [*tested, "more/" + tested[0]]:
        for score in IMAGE_SCORES:
            assert float(by_file[name][score]) == pytest.approx(float(reference[Path(name).name][score]), rel=1e-4,
                                                                abs=1e-6)
    for score in ("rec", "unc", "dsu"):  # a DICOM is scored as its prepared PNG would be
        assert float(by_file["more/ct.dcm"][score]) == pytest.approx(float(by_file["ct_prepared.png"][score]),
                                                                      rel=1e-6)
        assert np.isfinite(float(by_file["photo.jpg"][score]))

    overlays = sorted((tmp_path / "out" / "overlays").iterdir())  # 7 images: fewer than TOP_OVERLAYS
    assert len(overlays) == 7 and all(path.name.endswith("_rec.png") for path in overlays)
    for path in overlays:
        with Image.open(path) as image:
            assert image.format == "PNG"
    printed = capsys.readouterr().out
    top = max(rows, key=lambda row: float(row["rec"]))["file"]
    assert "highest rec first" in printed and top in printed


def test_overlay_names_are_unique():
    paths = [Path("a/x.png"), Path("b/x.png"), Path("b/x.dcm"), Path("y.png")]
    assert predict.overlay_names(paths, "dsu") == ["a_x_png_dsu.png", "b_x_png_dsu.png", "b_x_dcm_dsu.png",
                                                   "y_dsu.png"]
    # A generated name that is also a real stem gets a counter.
    clash = [Path("a_x_png.png"), Path("a/x.png"), Path("b/x.png")]
    assert predict.overlay_names(clash, "dsu") == ["a_x_png_dsu.png", "a_x_png_2_dsu.png", "b_x_png_dsu.png"]


def overlay_files(folder) -> set:
    return {path.name for path in (folder / "overlays").iterdir()} if (folder / "overlays").exists() else set()


def test_overlays_of_the_highest_images_by_default_and_of_all_on_request(tiny_root, tiny_run, tmp_path, monkeypatch,
                                                                         capsys):
    images = tiny_root / "tiny" / "images"
    monkeypatch.setattr(predict, "TOP_OVERLAYS", 3)
    predict.main(["--run", str(tiny_run), str(images), "--out", str(tmp_path / "top")])
    rows = list(csv.DictReader(open(tmp_path / "top" / "predictions.csv")))
    assert len(rows) == 64
    highest = sorted(rows, key=lambda row: -float(row["rec"]))[:3]  # the default score is rec
    assert overlay_files(tmp_path / "top") == {f"{Path(row['file']).stem}_rec.png" for row in highest}
    assert "wrote 3 overlay(s) of the rec map for the 3 highest on rec" in capsys.readouterr().out

    predict.main(["--run", str(tiny_run), str(images), "--out", str(tmp_path / "all"), "--overlays", "all",
                  "--score", "dsu_z_top1"])
    assert overlay_files(tmp_path / "all") == {f"{Path(row['file']).stem}_dsu.png" for row in rows}
    assert "overlay(s) of the raw dsu map, which dsu_z_top1 comes from," in capsys.readouterr().out
    predict.main(["--run", str(tiny_run), str(images), "--out", str(tmp_path / "none"), "--overlays", "none"])
    assert overlay_files(tmp_path / "none") == set()


def test_overlays_of_the_flagged_images(tiny_root, held_out_run, tmp_path, capsys):
    predict.main(["--run", str(held_out_run), str(tiny_root / "tiny" / "images"), "--out", str(tmp_path / "out"),
                  "--fpr", "0.5"])
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    flagged = {f"{Path(row['file']).stem}_rec.png" for row in rows if row["flagged"] == "1"}
    assert flagged and len(flagged) < len(rows)  # the test says something only when it picks a subset
    assert overlay_files(tmp_path / "out") == flagged
    assert f"wrote {len(flagged)} overlay(s) of the rec map for the flagged images" in capsys.readouterr().out


def test_incomplete_run_is_refused(tiny_run, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_run, partial, ignore=shutil.ignore_patterns("learner_1.pt", "tb"))
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--run", str(partial), str(tiny_run)])
    assert exit_info.value.code == 2
    assert "learner_1.pt not found" in capsys.readouterr().err


def test_user_errors_are_one_line(tiny_root, tiny_run, tmp_path):
    """Missing run folder, no images, a corrupt image: exit 2, one `error:` line naming the problem, no traceback."""
    good = tiny_root / "tiny" / "images" / "test_normal_0000.png"
    for name in ("missing_run", "no_images", "corrupt"):
        (tmp_path / name).mkdir()
    shutil.copy(good, tmp_path / "missing_run")
    (tmp_path / "no_images" / "readme.txt").write_text("no pictures here")
    shutil.copy(good, tmp_path / "corrupt")
    (tmp_path / "corrupt" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing sensible")
    cases = [(tmp_path / "nowhere", "missing_run", "nowhere not found"),
             (tiny_run, "no_images", "no images found"),
             (tiny_run, "corrupt", "broken.png")]
    results = [run_main("predict.py", "--run", run, tmp_path / images, "--out", tmp_path / f"out_{images}")
               for run, images, _ in cases]
    for (_, _, expected), result in zip(cases, results):
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected in errors[0], result.stderr


def test_readme_figures_from_a_run(held_out_run, tmp_path, capsys):
    readme_figures.main(["--run", str(held_out_run), "--out", str(tmp_path / "images"), "--fpr", "0.5"])
    assert sorted(path.name for path in (tmp_path / "images").iterdir()) == ["overview.png", "predict_overlays.png"]
    for path in (tmp_path / "images").iterdir():
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 200
    assert "predict.py's overlays of test_" in capsys.readouterr().out


def test_readme_figures_refuse_a_run_without_p_values(tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        readme_figures.main(["--run", str(tiny_run), "--out", str(tmp_path / "images")])
    assert exit_info.value.code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "--fpr needs a run trained with Data.holdout" in errors[0]


def test_overlay_figure_shows_what_predict_writes(tiny_root, held_out_run, tmp_path):
    split = read_split(tiny_root / "tiny")
    shown = readme_figures.predict_overlays(held_out_run, split, tmp_path / "overlays.png", fpr=0.5)
    files = [str(split.directory / "images" / name) for name in split.test]
    predict.main(["--run", str(held_out_run), *files, "--out", str(tmp_path / "out"), "--fpr", "0.5"])
    written = read_csv(tmp_path / "out" / "predictions.csv", "file")
    assert shown == [written[row["file"]] for row in shown]  # predict's own rows: its scores, p-values and flags
    flags = [row["flagged"] for row in shown]
    assert flags == sorted(flags, reverse=True) and set(flags) == {"0", "1"}  # a row flagged, then one not
    assert all((float(row["p_rec"]) <= 0.5) == (row["flagged"] == "1") for row in shown)


def test_shown_rows_take_the_first_abnormal_then_normal_images_of_each_outcome():
    flagged = [1, 0, 1, 1, 0, 0, 1, 0]
    labels = [1, 1, 0, 1, 0, 1, 0, 0]
    assert readme_figures.shown_rows(flagged, labels) == [[0, 3, 2, 6], [1, 5, 4, 7]]
    assert readme_figures.shown_rows(flagged, labels, per_kind=1) == [[0, 2], [1, 4]]
    assert readme_figures.shown_rows([0, 0], [1, 0]) == [[], [0, 1]]  # nothing flagged: an empty first row


@pytest.mark.parametrize("num_learners, roles, loss", [
    (3, ["learner 0: no repulsion", "junior learner 1", "junior learner 2"], "CKA}(f_{2}, f_j)"),
    (5, ["learner 0: no repulsion", "junior learner 1", "junior learner K-1"], "CKA}(f_{K-1}, f_j)")])
def test_overview_counts_learners_from_0(num_learners, roles, loss, monkeypatch):
    # As the logs, learner_0.pt and eval's tables do: learner 0 has no senior, the juniors are 1 .. K-1.
    drawn = []
    monkeypatch.setattr(readme_figures, "_save",
                        lambda fig, path: drawn.extend(text.get_text() for text in fig.findobj(Text)))
    readme_figures.overview_diagram("unused.png", num_learners)
    assert [text.split("\n")[0] for text in drawn if text.startswith(("learner ", "junior learner "))] == roles
    assert sum(loss in text for text in drawn) == 1 and not any("learner 3" in text for text in drawn)


def test_out_naming_a_file_is_one_line(tiny_root, tiny_run, tmp_path):
    (tmp_path / "taken.csv").write_text("mine\n")
    result = run_main("predict.py", "--run", tiny_run, tiny_root / "tiny" / "images" / "test_normal_0000.png",
                      "--out", tmp_path / "taken.csv")
    assert result.returncode == 2 and "taken.csv" in result.stderr and "folder" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and (tmp_path / "taken.csv").read_text() == "mine\n"
    result = run_main("predict.py", "--run", tiny_run, tiny_root / "tiny" / "images" / "test_normal_0000.png",
                      "--out", tmp_path / "taken.csv" / "inside")
    assert result.returncode == 2 and "cannot make the output folder" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
