"""datasets.prepare on real DICOMs from pydicom's bundled test files, on small synthetic JPEG folders, and on fake
raw folders named after the shipped benchmark splits."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from datasets.dicom import dicom_to_array
from datasets.prepare.convert import prepare
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SPLITS = REPO / "datasets" / "splits"
# Read straight from the installed package; pydicom's fetch helpers may go to the network.
DICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def benchmark_rule(path, first_frame=False):
    """The Med-AD benchmark's preparation rule as its README states it, in the pixel array's own dtype:
    MONOCHROME1 -> max(img) - img; not uint8 -> ((img - min) / (max - min) * 255).astype(uint8);
    Image.fromarray(img).convert('L').resize((512, 512), BILINEAR)."""
    dataset = pydicom.dcmread(path)
    img = dataset.pixel_array
    img = img[0] if first_frame else img
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        img = np.max(img) - img
    if img.dtype != np.uint8:
        img = ((img - np.min(img)) / (np.max(img) - np.min(img)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(img).convert("L").resize((512, 512), Image.BILINEAR))


def rounded_rule(path):
    """The rule with rounding instead of truncation: what the tests must tell apart."""
    img = pydicom.dcmread(path).pixel_array.astype(np.float64)
    img = np.rint((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(img).resize((512, 512), Image.BILINEAR))


def shipped(name):
    return json.loads((SPLITS / f"{name}.json").read_text())


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
    assert json.loads(data_json.read_text()) == {  # the split file's order, names as PNGs
        "train": {"0": ["p_ct.png", "p_mr.png", "p_liver.png"]},
        "test": {"0": ["p_rle.png"], "1": ["p_jpeg.png", "p_j2k.png"]},
    }
    images = tmp_path / "out" / "RSNA" / "images"
    assert sorted(path.name for path in images.iterdir()) == [
        "p_ct.png", "p_j2k.png", "p_jpeg.png", "p_liver.png", "p_mr.png", "p_rle.png"]
    for name, bundled in RSNA_FILES.items():
        if name == "p_unlisted":
            continue
        output = read_png(images / f"{name}.png")
        assert output.shape == (512, 512) and output.dtype == np.uint8
        np.testing.assert_array_equal(output, benchmark_rule(DICOM_FILES / bundled), err_msg=name)
        if pydicom.dcmread(DICOM_FILES / bundled).pixel_array.dtype != np.uint8:
            # Truncation, not rounding: the rounded variant differs, so this comparison can fail.
            assert (output != rounded_rule(DICOM_FILES / bundled)).any(), name

    # 693_J2KI is already 512x512, so the resize keeps the min-max scaled values exactly.
    raw_pixels = pydicom.dcmread(DICOM_FILES / "693_J2KI.dcm").pixel_array.astype(np.float64)
    assert raw_pixels.min() != raw_pixels.max()
    j2k = read_png(images / "p_j2k.png")
    assert j2k.min() == 0 and j2k.max() == 255
    expected = np.floor((raw_pixels - raw_pixels.min()) / np.ptp(raw_pixels) * 255)
    np.testing.assert_array_equal(j2k, expected.astype(np.uint8))
    # An 8-bit image is not rescaled: only resized.
    liver = pydicom.dcmread(DICOM_FILES / "liver_1frame.dcm").pixel_array
    assert liver.dtype == np.uint8
    np.testing.assert_array_equal(read_png(images / "p_liver.png"), liver)


def eight_bit_dicom(path, max_value=200):
    """CT_small with 8-bit pixels 0..max_value: a MONOCHROME1 inversion by max(img) - img is then not 255 - img."""
    dataset = pydicom.dcmread(DICOM_FILES / "CT_small.dcm")
    ct = dataset.pixel_array.astype(np.int64)
    dataset.PixelData = ((ct - ct.min()) * max_value // np.ptp(ct)).astype(np.uint8).tobytes()
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.save_as(path)
    return path


@pytest.mark.parametrize("source", ["693_J2KI.dcm", "MR_small.dcm", "JPGExtended.dcm", "eight_bit"])
def test_monochrome1_matches_the_benchmark_rule(tmp_path, source):
    """A MONOCHROME1 file derived from a real one: pixel for pixel the benchmark's rule, for every pixel type."""
    path = eight_bit_dicom(tmp_path / "8bit.dcm") if source == "eight_bit" else DICOM_FILES / source
    dataset = pydicom.dcmread(path)
    assert dataset.PhotometricInterpretation == "MONOCHROME2"
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.save_as(tmp_path / "mono1.dcm")
    inverted = dicom_to_array(tmp_path / "mono1.dcm")
    np.testing.assert_array_equal(inverted, benchmark_rule(tmp_path / "mono1.dcm"))

    stored = dataset.pixel_array
    if stored.dtype == np.uint8:
        # 8-bit pixels are inverted as max(img) - img and not rescaled: values stay within 0..max.
        assert stored.max() == 200 and inverted.max() <= 200
        np.testing.assert_array_equal(inverted, np.asarray(Image.fromarray(stored.max() - stored)
                                                           .resize((512, 512), Image.BILINEAR)))
    else:
        # The same picture in negative: truncation makes at most one step of difference.
        original = dicom_to_array(path).astype(int)
        assert np.abs(inverted.astype(int) - (255 - original)).max() <= 2
        assert not np.array_equal(inverted, 255 - original.astype(np.uint8))  # truncation is not symmetric


def test_constant_multiframe_and_colour_dicoms(tmp_path):
    dataset = pydicom.dcmread(DICOM_FILES / "CT_small.dcm")
    dataset.PixelData = np.full((dataset.Rows, dataset.Columns), 700, np.int16).tobytes()
    dataset.save_as(tmp_path / "constant.dcm")
    with np.errstate(all="raise"):
        constant = dicom_to_array(tmp_path / "constant.dcm")
    assert constant.shape == (512, 512) and not constant.any()

    frames = dicom_to_array(DICOM_FILES / "rtdose.dcm")  # 15 frames of uint32: the first is kept
    np.testing.assert_array_equal(frames, benchmark_rule(DICOM_FILES / "rtdose.dcm", first_frame=True))

    colour = dicom_to_array(DICOM_FILES / "examples_rgb_color.dcm")  # PIL's convert("L"), as the benchmark
    np.testing.assert_array_equal(colour, benchmark_rule(DICOM_FILES / "examples_rgb_color.dcm"))


def test_unreadable_dicom_is_reported_and_blocks_data_json(tmp_path, capsys):
    raw = make_rsna_raw(tmp_path / "raw", {"good": "MR_small.dcm", "broken": "MR_truncated.dcm"})
    split = write_json(tmp_path / "split.json", {"train": {"0": ["good.png"]}, "test": {"0": [], "1": ["broken.png"]}})
    with pytest.raises(UserError, match="1 of 2 file"):
        prepare("rsna", raw, tmp_path / "out", split=split, workers=1)
    failure_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("unreadable:")]
    assert len(failure_lines) == 1 and "broken.dcm" in failure_lines[0]
    assert not (tmp_path / "out" / "RSNA" / "data.json").exists()
    assert sorted(path.name for path in (tmp_path / "out" / "RSNA" / "images").iterdir()) == ["good.png"]


def test_rsna_and_vin_labels_of_the_seeded_split(tmp_path):
    rsna = make_rsna_raw(tmp_path / "rsna", {f"n{i}": "MR_small.dcm" for i in range(5)}
                         | {"a0": "MR_small.dcm", "a1": "MR_small.dcm", "x0": "MR_small.dcm"})
    classes = ["Normal"] * 5 + ["Lung Opacity", "Lung Opacity", "Lung Opacity", "No Lung Opacity / Not Normal"]
    ids = [f"n{i}" for i in range(5)] + ["a0", "a0", "a1", "x0"]  # a0 has two boxes, so two rows
    (rsna / "stage_2_detailed_class_info.csv").write_text(
        "patientId,class\n" + "".join(f"{pid},{cls}\n" for pid, cls in zip(ids, classes)))
    data = json.loads(prepare("rsna", rsna, tmp_path / "out", split="seeded", workers=1).read_text())
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
    data = json.loads(prepare("vin", vin.parent, tmp_path / "out", split="seeded", workers=1).read_text())
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
    first = json.loads(prepare("brain", raw, tmp_path / "a", split="seeded", workers=2, seed=3).read_text())
    printed = capsys.readouterr()
    assert "proportionally fewer" in printed.err and "NOT the Med-AD benchmark split" in printed.out
    again = json.loads(prepare("brain", raw, tmp_path / "b", split="seeded", workers=1, seed=3).read_text())
    other = json.loads(prepare("brain", raw, tmp_path / "c", split="seeded", workers=1, seed=4).read_text())
    assert first == again
    assert first != other

    # 16 normal / 6 abnormal against 1600 / 600: everything scaled by 1/100 -> 10 / 6 / 6.
    normal = {f"no_{i}.jpg" for i in range(10)} | {f"te_no_{i}.jpg" for i in range(5)} | {"notumor_dup.jpg"}
    abnormal = {"gl_0.jpg", "gl_1.jpg", "glioma_dup.jpg", "pi_0.jpg", "pi_1.jpg", "pi_2.jpg"}
    for data in (first, other):
        assert len(data["train"]["0"]) == 10 and len(data["test"]["0"]) == 6 and len(data["test"]["1"]) == 6
        assert set(data["train"]["0"]) | set(data["test"]["0"]) == normal
        assert set(data["test"]["1"]) == abnormal
        assert all(names == sorted(names) for names in (data["train"]["0"], data["test"]["0"], data["test"]["1"]))

    # JPEGs are copied, not re-encoded; colliding names get their class folder.
    images = tmp_path / "a" / "BrainTumor" / "images"
    assert (images / "glioma_dup.jpg").read_bytes() == (raw / "Training/glioma/dup.jpg").read_bytes()
    assert (images / "notumor_dup.jpg").read_bytes() == (raw / "Training/notumor/dup.jpg").read_bytes()
    assert (images / "pi_2.jpg").read_bytes() == (raw / "Testing/pituitary/pi_2.jpg").read_bytes()


def test_lag_split_skips_attention_maps(tmp_path):
    raw = tmp_path / "raw"
    for folder in ("non_glaucoma/image", "non_glaucoma/attention_map", "suspicious_glaucoma/image"):
        (raw / folder).mkdir(parents=True)
    for folder, stem, colour in [("non_glaucoma/image", "n1", (10, 200, 30)), ("non_glaucoma/image", "n2", (1, 2, 3)),
                                 ("non_glaucoma/attention_map", "n1", (0, 0, 0)),
                                 ("suspicious_glaucoma/image", "s1", (9, 9, 9))]:
        Image.new("RGB", (8, 6), colour).save(raw / folder / f"{stem}.jpg")
    # Listed by stem: a split naming x.png takes the raw x.jpg, under its own name.
    published = {"train": {"0": ["n1.png"]}, "test": {"0": ["n2.jpg"], "1": ["s1.png"]}}
    data = json.loads(prepare("lag", raw, tmp_path / "out", split=write_json(tmp_path / "split.json", published),
                              workers=1).read_text())
    assert data == {"train": {"0": ["n1.jpg"]}, "test": {"0": ["n2.jpg"], "1": ["s1.jpg"]}}
    images = tmp_path / "out" / "LAG" / "images"
    assert sorted(path.name for path in images.iterdir()) == ["n1.jpg", "n2.jpg", "s1.jpg"]
    assert (images / "n1.jpg").read_bytes() == (raw / "non_glaucoma/image/n1.jpg").read_bytes()


def test_second_run_converts_nothing(tmp_path, capsys):
    raw = make_brain_raw(tmp_path / "raw")
    data_json = prepare("brain", raw, tmp_path / "out", split="seeded", workers=2)
    images = data_json.parent / "images"
    before = {path.name: path.stat().st_mtime_ns for path in images.iterdir()}
    content = data_json.read_text()
    capsys.readouterr()

    prepare("brain", raw, tmp_path / "out", split="seeded", workers=2)
    assert "converted 0, kept 22 existing" in capsys.readouterr().out
    assert {path.name: path.stat().st_mtime_ns for path in images.iterdir()} == before
    assert data_json.read_text() == content
    assert len(before) == 22 and not any(name.endswith(".tmp") for name in before)


def test_corrupt_jpeg_is_reported_not_copied(tmp_path, capsys):
    raw = make_brain_raw(tmp_path / "raw")
    jpeg = (raw / "Training/glioma/gl_0.jpg").read_bytes()
    (raw / "Training/glioma/gl_0.jpg").write_bytes(jpeg[:len(jpeg) // 2])  # truncated
    with pytest.raises(UserError, match="1 of 22 file"):
        prepare("brain", raw, tmp_path / "out", split="seeded", workers=2)
    assert "gl_0.jpg" in capsys.readouterr().err
    assert not (tmp_path / "out" / "BrainTumor" / "images" / "gl_0.jpg").exists()
    assert not (tmp_path / "out" / "BrainTumor" / "data.json").exists()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "datasets.prepare", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def one_error_line(stderr):
    """stderr of a failed run: one `error:` line, last, after at most the progress bar; returned as a list."""
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("RSNA:")]  # the progress bar
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines


@pytest.mark.parametrize("case", ["missing_src", "missing_listed_file", "unknown_dataset", "no_images",
                                  "not_the_download"])
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
        "not_the_download": ["rsna", "--src", raw, "--out", tmp_path / "out"],  # no name of the benchmark split
    }[case]
    result = run_cli(*arguments, "--workers", 1)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = one_error_line(result.stderr)
    expected = {"missing_src": "nowhere", "missing_listed_file": "2 of the 3 files of split file",
                "unknown_dataset": "mnist", "no_images": "no DICOM files",
                "not_the_download": "none of the 5851 files of the RSNA benchmark split"}[case]
    assert expected in lines[0]
    if case == "missing_listed_file":
        assert "gone1.png" in lines[0] and "gone2.dcm" in lines[0] and "--allow-missing" in lines[0]
        assert (tmp_path / "out" / "RSNA" / "images" / "p_mr.png").is_file()  # the rest is converted
    assert not (tmp_path / "out" / "RSNA" / "data.json").exists()


def test_split_file_that_is_not_an_object_is_a_user_error(tmp_path):
    raw = make_brain_raw(tmp_path / "raw")
    with pytest.raises(UserError, match="must be a JSON object"):
        prepare("brain", raw, tmp_path / "out", split=write_json(tmp_path / "split.json", ["a.png"]), workers=1)


def test_hidden_and_macos_files_are_skipped(tmp_path):
    clean = json.loads(prepare("brain", make_brain_raw(tmp_path / "clean"), tmp_path / "a", split="seeded",
                               workers=1).read_text())
    raw = make_brain_raw(tmp_path / "raw")
    (raw / "Training/notumor/._no_0.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # unreadable as a JPEG
    (raw / "__MACOSX/Training/glioma").mkdir(parents=True)
    (raw / "__MACOSX/Training/glioma/gl_9.jpg").write_bytes(b"junk")
    assert json.loads(prepare("brain", raw, tmp_path / "b", split="seeded", workers=1).read_text()) == clean


def test_label_csv_with_byte_order_mark(tmp_path):
    rsna = make_rsna_raw(tmp_path / "rsna", {f"n{i}": "MR_small.dcm" for i in range(5)} | {"a0": "MR_small.dcm"})
    rows = "".join(f"n{i},Normal\n" for i in range(5)) + "a0,Lung Opacity\n"
    (rsna / "stage_2_detailed_class_info.csv").write_text("\ufeffpatientId,class\n" + rows, encoding="utf-8")
    data = json.loads(prepare("rsna", rsna, tmp_path / "out", split="seeded", workers=1).read_text())
    assert data["test"]["1"] == ["a0.png"]


# ---------------------------------------------------------------- the shipped benchmark splits

PUBLISHED = {  # the benchmark's table: train normal, test normal / abnormal, unlabeled normal / abnormal
    "RSNA": (3851, 1000, 1000, 4000, 5012),
    "VinCXR": (4000, 1000, 1000, 5606, 3394),
    "BrainTumor": (1000, 600, 600, 400, 600),
    "LAG": (1500, 811, 811, 832, 900),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_shipped_split_has_the_published_counts(name):
    data = shipped(name)
    lists = [data["train"]["0"], data["test"]["0"], data["test"]["1"],
             data["train"]["unlabeled"]["0"], data["train"]["unlabeled"]["1"]]
    assert tuple(map(len, lists)) == PUBLISHED[name]
    everything = [file for names in lists for file in names]
    assert len(set(everything)) == len(everything)  # no name twice, within a list or across lists
    suffixes = {Path(file).suffix for file in everything}
    assert suffixes == ({".png"} if name in ("RSNA", "VinCXR") else {".jpg"})
    assert "MIT License" in (SPLITS / "LICENSE-DDAD-ASR").read_text()


def restricted(data, present):
    """The shipped split's three lists, in the shipped order, keeping only the present names."""
    return {"train": {"0": [f for f in data["train"]["0"] if f in present]},
            "test": {label: [f for f in data["test"][label] if f in present] for label in ("0", "1")}}


def test_rsna_benchmark_subset_needs_allow_missing(tmp_path, capsys):
    data = shipped("RSNA")
    picked = data["train"]["0"][:3] + data["test"]["0"][:2] + data["test"]["1"][-2:]
    bundled = ["CT_small.dcm", "MR_small.dcm", "JPGExtended.dcm", "693_J2KI.dcm", "MR_small_RLE.dcm",
               "liver_1frame.dcm", "CT_small.dcm"]
    raw = make_rsna_raw(tmp_path / "raw", {Path(name).stem: file for name, file in zip(picked, bundled)}
                        | {"not-in-the-split": "MR_small.dcm"})

    result = run_cli("rsna", "--src", raw, "--out", tmp_path / "out", "--workers", 1)
    assert result.returncode == 2
    lines = one_error_line(result.stderr)
    assert lines[0].startswith("error: 5844 of the 5851 files of the RSNA benchmark split are not under")
    assert "*.dcm" in lines[0] and "--allow-missing" in lines[0]
    assert [name for name in data["train"]["0"] if name not in picked][0] in lines[0]  # names the first missing
    assert not (tmp_path / "out" / "RSNA" / "data.json").exists()
    images = tmp_path / "out" / "RSNA" / "images"
    assert sorted(path.name for path in images.iterdir()) == sorted(picked)  # converted all the same

    data_json = prepare("rsna", raw, tmp_path / "out", workers=2, allow_missing=True)
    assert json.loads(data_json.read_text()) == restricted(data, set(picked))
    printed = capsys.readouterr()
    assert "converted 0, kept 7 existing" in printed.out  # resumed from the refused run
    assert "closest to the Med-AD RSNA split: 5844 of its 5851 files missing" in printed.out
    for name, file in zip(picked, bundled):
        np.testing.assert_array_equal(read_png(images / name), benchmark_rule(DICOM_FILES / file), err_msg=name)


@pytest.mark.parametrize("dataset, name", [("brain", "BrainTumor"), ("lag", "LAG")])
def test_jpeg_benchmark_subset_is_copied_byte_for_byte(tmp_path, capsys, dataset, name):
    data = shipped(name)
    normal = data["train"]["0"][:4] + data["test"]["0"][:2]
    abnormal = data["test"]["1"][:3]
    if dataset == "brain":
        folders = {file: ("Training/notumor" if i % 2 else "Testing/notumor") for i, file in enumerate(normal)}
        folders |= {file: "Testing/glioma" for file in abnormal}
    else:
        folders = {file: "non_glaucoma/image" for file in normal}
        folders |= {file: "suspicious_glaucoma/image" for file in abnormal}
        (tmp_path / "raw" / "non_glaucoma/attention_map").mkdir(parents=True)
        Image.new("L", (4, 4)).save(tmp_path / "raw" / "non_glaucoma/attention_map" / normal[0])  # same name
    generator = np.random.default_rng(1)
    for file, folder in folders.items():
        (tmp_path / "raw" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(generator.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(
            tmp_path / "raw" / folder / file, quality=75)

    with pytest.raises(UserError, match="not under .*--allow-missing"):
        prepare(dataset, tmp_path / "raw", tmp_path / "out", workers=1)
    data_json = prepare(dataset, tmp_path / "raw", tmp_path / "out", workers=1, allow_missing=True)
    assert json.loads(data_json.read_text()) == restricted(data, set(folders))
    images = data_json.parent / "images"
    assert sorted(path.name for path in images.iterdir()) == sorted(folders)
    for file, folder in folders.items():
        assert (images / file).read_bytes() == (tmp_path / "raw" / folder / file).read_bytes(), file
    assert f"closest to the Med-AD {name} split" in capsys.readouterr().out
