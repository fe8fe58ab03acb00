"""datasets.prepare on real DICOMs from pydicom's bundled test files and on small synthetic JPEG folders."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from datasets.prepare import dicom_to_array, picture_to_array, prepare
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# Read straight from the installed package; pydicom's fetch helpers may go to the network.
DICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def reference(path, first_frame=False):
    """The DICOM preparation rule written out with numpy + PIL, independently of the module."""
    dataset = pydicom.dcmread(path)
    pixels = dataset.pixel_array
    pixels = pixels[0] if first_frame else pixels
    if pixels.dtype != np.uint8:
        pixels = pixels.astype(np.float64)
        if dataset.PhotometricInterpretation == "MONOCHROME1":
            pixels = pixels.max() - pixels
        pixels = np.rint((pixels - pixels.min()) / (pixels.max() - pixels.min()) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(pixels).resize((512, 512), Image.BILINEAR))


def read_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "L"
        return np.asarray(image)


# Raw RSNA name -> bundled file: uncompressed, RLE, JPEG extended (libjpeg), JPEG 2000 (openjpeg), 8-bit.
RSNA_FILES = {
    "p_ct": "CT_small.dcm",
    "p_mr": "MR_small.dcm",
    "p_rle": "MR_small_RLE.dcm",
    "p_jpeg": "JPGExtended.dcm",
    "p_j2k": "693_J2KI.dcm",
    "p_liver": "liver_1frame.dcm",
    "p_unlisted": "MR_small_implicit.dcm",
}
RSNA_SPLIT = {
    "train": {"0": ["p_ct.png", "p_mr.dcm", "p_liver.png"], "unlabeled": {"0": ["p_unlisted.png"], "1": []}},
    "test": {"0": ["p_rle.jpg"], "1": ["p_jpeg.png", "p_j2k.png"]},
}


def make_rsna_raw(root, files=RSNA_FILES):
    images = root / "stage_2_train_images"
    images.mkdir(parents=True)
    for name, bundled in files.items():
        shutil.copy(DICOM_FILES / bundled, images / f"{name}.dcm")
    return root


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def test_rsna_with_split_matches_reference(tmp_path):
    raw = make_rsna_raw(tmp_path / "raw")
    split = write_json(tmp_path / "split.json", RSNA_SPLIT)
    data_json = prepare("rsna", raw, tmp_path / "out", split=split, workers=2)

    assert data_json == tmp_path / "out" / "RSNA" / "data.json"
    assert json.loads(data_json.read_text()) == {
        "train": {"0": ["p_ct.png", "p_liver.png", "p_mr.png"]},
        "test": {"0": ["p_rle.png"], "1": ["p_j2k.png", "p_jpeg.png"]},
    }
    images = tmp_path / "out" / "RSNA" / "images"
    assert sorted(path.name for path in images.iterdir()) == [
        "p_ct.png", "p_j2k.png", "p_jpeg.png", "p_liver.png", "p_mr.png", "p_rle.png"]
    for name, bundled in RSNA_FILES.items():
        if name == "p_unlisted":
            continue
        output = read_png(images / f"{name}.png")
        assert output.shape == (512, 512) and output.dtype == np.uint8
        np.testing.assert_array_equal(output, reference(DICOM_FILES / bundled), err_msg=name)

    # 693_J2KI is already 512x512, so the resize keeps the min-max scaled values exactly.
    raw_pixels = pydicom.dcmread(DICOM_FILES / "693_J2KI.dcm").pixel_array.astype(np.float64)
    assert raw_pixels.min() != raw_pixels.max()
    j2k = read_png(images / "p_j2k.png")
    assert j2k.min() == 0 and j2k.max() == 255
    expected = np.rint((raw_pixels - raw_pixels.min()) / np.ptp(raw_pixels) * 255)
    np.testing.assert_array_equal(j2k, expected.astype(np.uint8))
    # An 8-bit image is not rescaled: only resized.
    liver = pydicom.dcmread(DICOM_FILES / "liver_1frame.dcm").pixel_array
    assert liver.dtype == np.uint8
    np.testing.assert_array_equal(read_png(images / "p_liver.png"), liver)


@pytest.mark.parametrize("bundled, tolerance", [
    ("693_J2KI.dcm", 1),  # 512x512: no resize, so only the uint8 rounding differs
    ("MR_small.dcm", 2),  # 64x64: PIL's fixed-point bilinear adds at most one more step
])
def test_monochrome1_is_inverted(tmp_path, bundled, tolerance):
    dataset = pydicom.dcmread(DICOM_FILES / bundled)
    assert dataset.PhotometricInterpretation == "MONOCHROME2"
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.save_as(tmp_path / "mono1.dcm")
    original = dicom_to_array(DICOM_FILES / bundled).astype(int)
    inverted = dicom_to_array(tmp_path / "mono1.dcm").astype(int)
    assert np.abs(inverted - (255 - original)).max() <= tolerance
    assert np.abs(inverted - (255 - original)).mean() < 0.25  # rounding only, not an offset image
    np.testing.assert_array_equal(inverted, reference(tmp_path / "mono1.dcm"))


def test_constant_multiframe_and_colour_dicoms(tmp_path):
    dataset = pydicom.dcmread(DICOM_FILES / "CT_small.dcm")
    dataset.PixelData = np.full((dataset.Rows, dataset.Columns), 700, np.int16).tobytes()
    dataset.save_as(tmp_path / "constant.dcm")
    with np.errstate(all="raise"):
        constant = dicom_to_array(tmp_path / "constant.dcm")
    assert constant.shape == (512, 512) and not constant.any()

    frames = dicom_to_array(DICOM_FILES / "rtdose.dcm")  # 15 frames of uint32: the first is kept
    np.testing.assert_array_equal(frames, reference(DICOM_FILES / "rtdose.dcm", first_frame=True))

    colour = dicom_to_array(DICOM_FILES / "examples_rgb_color.dcm")
    rgb = pydicom.dcmread(DICOM_FILES / "examples_rgb_color.dcm").pixel_array
    gray = np.asarray(Image.fromarray(rgb).convert("L").resize((512, 512), Image.BILINEAR))
    assert colour.shape == (512, 512) and np.abs(colour.astype(int) - gray).max() <= 1


def test_unreadable_dicom_is_reported_and_blocks_data_json(tmp_path, capsys):
    raw = make_rsna_raw(tmp_path / "raw", {"good": "MR_small.dcm", "broken": "MR_truncated.dcm"})
    split = write_json(tmp_path / "split.json", {"train": {"0": ["good.png"]}, "test": {"0": [], "1": ["broken.png"]}})
    with pytest.raises(UserError, match="1 of 2 file"):
        prepare("rsna", raw, tmp_path / "out", split=split, workers=1)
    failure_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("unreadable:")]
    assert len(failure_lines) == 1 and "broken.dcm" in failure_lines[0]
    assert not (tmp_path / "out" / "RSNA" / "data.json").exists()
    assert sorted(path.name for path in (tmp_path / "out" / "RSNA" / "images").iterdir()) == ["good.png"]


def test_rsna_and_vin_labels_without_split(tmp_path):
    rsna = make_rsna_raw(tmp_path / "rsna", {f"n{i}": "MR_small.dcm" for i in range(5)}
                         | {"a0": "MR_small.dcm", "a1": "MR_small.dcm", "x0": "MR_small.dcm"})
    classes = ["Normal"] * 5 + ["Lung Opacity", "Lung Opacity", "Lung Opacity", "No Lung Opacity / Not Normal"]
    ids = [f"n{i}" for i in range(5)] + ["a0", "a0", "a1", "x0"]  # a0 has two boxes, so two rows
    (rsna / "stage_2_detailed_class_info.csv").write_text(
        "patientId,class\n" + "".join(f"{pid},{cls}\n" for pid, cls in zip(ids, classes)))
    data = json.loads(prepare("rsna", rsna, tmp_path / "out", workers=1).read_text())
    # 5 normal / 2 abnormal against 4851 / 1000: scaled by 5/4851 -> 3 / 1 / 1.
    assert len(data["train"]["0"]) == 3 and len(data["test"]["0"]) == 1 and len(data["test"]["1"]) == 1
    assert set(data["train"]["0"] + data["test"]["0"]) <= {f"n{i}.png" for i in range(5)}
    assert set(data["test"]["1"]) <= {"a0.png", "a1.png"}

    vin = tmp_path / "vin" / "train"
    vin.mkdir(parents=True)
    rows = []
    for i in range(6):
        shutil.copy(DICOM_FILES / "MR_small.dcm", vin / f"v{i}.dicom")
        rows += [f"v{i},No finding"] * 3
    rows += ["v3,Nodule/Mass"]  # one radiologist's finding makes v3 abnormal
    (vin.parent / "train.csv").write_text("image_id,class_name\n" + "\n".join(rows) + "\n")
    data = json.loads(prepare("vin", vin.parent, tmp_path / "out", workers=1).read_text())
    # 5 normal / 1 abnormal against 5000 / 1000: scaled by 1/1000 -> 4 / 1 / 1.
    assert data["test"]["1"] == ["v3.png"]
    assert len(data["train"]["0"]) == 4 and len(data["test"]["0"]) == 1
    assert "v3.png" not in data["train"]["0"] + data["test"]["0"]


def make_brain_raw(root):
    """16 normal and 6 abnormal JPEGs; `dup` exists in a normal and an abnormal folder."""
    generator = np.random.default_rng(0)
    layout = {"Training/notumor": [f"no_{i}" for i in range(10)] + ["dup"],
              "Testing/notumor": [f"te_no_{i}" for i in range(5)],
              "Training/glioma": ["gl_0", "gl_1", "dup"],
              "Testing/pituitary": ["pi_0", "pi_1", "pi_2"]}
    for folder, stems in layout.items():
        (root / folder).mkdir(parents=True)
        for stem in stems:
            pixels = generator.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{stem}.jpg", quality=90)
    return root


def test_brain_seeded_split(tmp_path, capsys):
    raw = make_brain_raw(tmp_path / "raw")
    first = json.loads(prepare("brain", raw, tmp_path / "a", workers=2, seed=3).read_text())
    assert "proportionally fewer" in capsys.readouterr().err
    again = json.loads(prepare("brain", raw, tmp_path / "b", workers=1, seed=3).read_text())
    other = json.loads(prepare("brain", raw, tmp_path / "c", workers=1, seed=4).read_text())
    assert first == again
    assert first != other

    # 16 normal / 6 abnormal against 1600 / 600: everything scaled by 1/100 -> 10 / 6 / 6.
    normal = {f"no_{i}.png" for i in range(10)} | {f"te_no_{i}.png" for i in range(5)} | {"notumor_dup.png"}
    abnormal = {"gl_0.png", "gl_1.png", "glioma_dup.png", "pi_0.png", "pi_1.png", "pi_2.png"}
    for data in (first, other):
        assert len(data["train"]["0"]) == 10 and len(data["test"]["0"]) == 6 and len(data["test"]["1"]) == 6
        assert set(data["train"]["0"]) | set(data["test"]["0"]) == normal
        assert set(data["test"]["1"]) == abnormal

    images = tmp_path / "a" / "BrainTumor" / "images"
    output = read_png(images / "glioma_dup.png")
    with Image.open(raw / "Training/glioma/dup.jpg") as source:
        np.testing.assert_array_equal(output, np.asarray(source.convert("L")))
    assert output.shape == (20, 24)


def test_lag_split_skips_attention_maps(tmp_path):
    raw = tmp_path / "raw"
    for folder in ("non_glaucoma/image", "non_glaucoma/attention_map", "suspicious_glaucoma/image"):
        (raw / folder).mkdir(parents=True)
    for folder, stem in [("non_glaucoma/image", "n1"), ("non_glaucoma/image", "n2"),
                         ("non_glaucoma/attention_map", "n1"), ("suspicious_glaucoma/image", "s1")]:
        Image.new("RGB", (8, 6), (10, 200, 30)).save(raw / folder / f"{stem}.jpg")
    published = {"train": {"0": ["n1.png"]}, "test": {"0": ["n2.jpg"], "1": ["s1.png"]}}
    data = json.loads(prepare("lag", raw, tmp_path / "out", split=write_json(tmp_path / "split.json", published),
                              workers=1).read_text())
    assert data == {"train": {"0": ["n1.png"]}, "test": {"0": ["n2.png"], "1": ["s1.png"]}}
    outputs = sorted(path.name for path in (tmp_path / "out" / "LAG" / "images").iterdir())
    assert outputs == ["n1.png", "n2.png", "s1.png"]


def test_second_run_converts_nothing(tmp_path, capsys):
    raw = make_brain_raw(tmp_path / "raw")
    data_json = prepare("brain", raw, tmp_path / "out", workers=2)
    images = data_json.parent / "images"
    before = {path.name: path.stat().st_mtime_ns for path in images.iterdir()}
    content = data_json.read_text()
    capsys.readouterr()

    prepare("brain", raw, tmp_path / "out", workers=2)
    assert "converted 0, kept 22 existing" in capsys.readouterr().out
    assert {path.name: path.stat().st_mtime_ns for path in images.iterdir()} == before
    assert data_json.read_text() == content
    assert len(before) == 22 and not any(name.endswith(".tmp") for name in before)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "datasets.prepare", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("case", ["missing_src", "missing_listed_file", "unknown_dataset", "no_images"])
def test_bad_input_is_one_line(tmp_path, case):
    raw = make_rsna_raw(tmp_path / "raw", {"p_mr": "MR_small.dcm"})
    split = write_json(tmp_path / "split.json", {"train": {"0": ["p_mr.png", "gone1.png", "gone2.dcm"]},
                                                 "test": {"0": [], "1": []}})
    (tmp_path / "empty").mkdir()
    arguments = {
        "missing_src": ["rsna", "--src", tmp_path / "nowhere", "--out", tmp_path / "out"],
        "missing_listed_file": ["rsna", "--src", raw, "--out", tmp_path / "out", "--split", split],
        "unknown_dataset": ["mnist", "--src", raw, "--out", tmp_path / "out"],
        "no_images": ["rsna", "--src", tmp_path / "empty", "--out", tmp_path / "out"],
    }[case]
    result = run_cli(*arguments, "--workers", 1)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    expected = {"missing_src": "nowhere", "missing_listed_file": "2 file(s) listed",
                "unknown_dataset": "mnist", "no_images": "no DICOM files"}[case]
    assert expected in lines[0]
    if case == "missing_listed_file":
        assert "gone1.png" in lines[0] and "gone2.dcm" in lines[0]
    assert not (tmp_path / "out" / "RSNA" / "data.json").exists()


def test_sixteen_bit_picture_is_min_max_scaled(tmp_path):
    ramp = np.arange(16, dtype=np.uint16).reshape(4, 4) * 200 + 1000  # 1000..4000: convert("L") would clip to 255
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    expected = np.rint((ramp.astype(float) - 1000) / 3000 * 255).astype(np.uint8)
    np.testing.assert_array_equal(picture_to_array(tmp_path / "deep.png"), expected)


def test_split_file_that_is_not_an_object_is_a_user_error(tmp_path):
    raw = make_brain_raw(tmp_path / "raw")
    with pytest.raises(UserError, match="must be a JSON object"):
        prepare("brain", raw, tmp_path / "out", split=write_json(tmp_path / "split.json", ["a.png"]), workers=1)


def test_hidden_and_macos_files_are_skipped(tmp_path):
    clean = json.loads(prepare("brain", make_brain_raw(tmp_path / "clean"), tmp_path / "a", workers=1).read_text())
    raw = make_brain_raw(tmp_path / "raw")
    (raw / "Training/notumor/._no_0.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # unreadable as a JPEG
    (raw / "__MACOSX/Training/glioma").mkdir(parents=True)
    (raw / "__MACOSX/Training/glioma/gl_9.jpg").write_bytes(b"junk")
    assert json.loads(prepare("brain", raw, tmp_path / "b", workers=1).read_text()) == clean


def test_label_csv_with_byte_order_mark(tmp_path):
    rsna = make_rsna_raw(tmp_path / "rsna", {f"n{i}": "MR_small.dcm" for i in range(5)} | {"a0": "MR_small.dcm"})
    rows = "".join(f"n{i},Normal\n" for i in range(5)) + "a0,Lung Opacity\n"
    (rsna / "stage_2_detailed_class_info.csv").write_text("\ufeffpatientId,class\n" + rows, encoding="utf-8")
    data = json.loads(prepare("rsna", rsna, tmp_path / "out", workers=1).read_text())
    assert data["test"]["1"] == ["a0.png"]
