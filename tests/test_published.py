"""scripts/import_published.py against the published release's numerics (tests/published_release/README.md): state
dicts redrawn by the fixtures' rule and saved as the published trainer saves them, imported, then scored here."""
import csv
import hashlib
import json
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import eval as evaluate
import models
import predict
from models import to_model_input
from models import published
from tests.conftest import load_script, run_cli, run_main, write_config
from utils.method.dsu import image_scores, score_dataset
from utils.run import checkpoint, config
from utils.run.checkpoint import load_learners
from utils.run.published_run import import_published

FIXTURES = Path(__file__).parent / "published_release"
BACKBONES = ("AE", "AE-U", "MemAE")
CPU = torch.device("cpu")
# Largest |ours - published| allowed, relative to the largest |published value| of each quantity. Float32 reordering
# moves outputs by about 1e-7 of their size and scores by about 1e-7 of theirs; one wrong tensor, by 1e-3 or more.
OUTPUT_TOLERANCE, SCORE_TOLERANCE = 1e-5, 1e-6

importer = load_script("import_published")


def spec(backbone) -> dict:
    return json.loads((FIXTURES / backbone / "spec.json").read_text())


def drawn_state(backbone, index) -> dict:
    """Learner `index`'s published state dict, redrawn by the rule of manifest.json."""
    stream = np.random.RandomState(spec(backbone)["seeds"][index])
    state = {}
    for key, shape in spec(backbone)["keys_shapes"]:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
            continue
        n = stream.standard_normal(shape).astype(np.float32)
        if key.endswith("running_var"):
            value = np.exp(0.1 * n)
        elif key.endswith(("running_mean", "bias")):
            value = 0.1 * n
        elif len(shape) == 1:
            value = 1 + 0.1 * n
        else:
            value = n / np.sqrt(np.prod(shape[1:]))
        state[key] = torch.from_numpy(np.asarray(value, dtype=np.float32))
    return state


@contextmanager
def as_from_cuda():
    """torch.save tags every storage as a CUDA one, as it does for the published trainer's models."""
    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        yield
    finally:
        torch.serialization.location_tag = original


def save_published(folder, backbone, count=2, change=None) -> Path:
    """<folder>/train/<k>.pth as the published trainer writes them; change(index, state) may alter a state first."""
    (folder / "train").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        state = drawn_state(backbone, index % 2)
        if change:
            change(index, state)
        with as_from_cuda():
            torch.save(state, folder / "train" / f"{index}.pth")
    return folder


def swap(first, second, learner=1):
    def change(index, state):
        if index == learner:
            state[first], state[second] = state[second], state[first]
    return change


def inputs_u8() -> torch.Tensor:
    return torch.from_numpy(np.load(FIXTURES / "inputs.npy"))


def differences(learners, backbone) -> dict:
    """{quantity: (largest |ours - published|, the tolerance)} of every output of every learner and of the three
    image scores of the ensemble (image score = mean of the pixel map)."""
    outputs = np.load(FIXTURES / backbone / "outputs.npz")
    found = {}
    with torch.no_grad():
        for index, learner in enumerate(learners):
            out = learner(to_model_input(inputs_u8()))
            for name in ("x_hat", "features", "log_var"):
                if f"learner{index}_{name}" in outputs:
                    theirs = outputs[f"learner{index}_{name}"]
                    found[f"learner{index}_{name}"] = (np.abs(out[name].numpy() - theirs).max(),
                                                       OUTPUT_TOLERANCE * np.abs(theirs).max())
    scores = image_scores(score_dataset(learners, inputs_u8(), 0, CPU).maps)
    theirs = json.loads((FIXTURES / backbone / "scores.json").read_text())
    for name, values in theirs.items():
        found[name] = (np.abs(scores[name].double().numpy() - values).max(), SCORE_TOLERANCE * np.abs(values).max())
    return found


def failing(found) -> set:
    return {name for name, (difference, tolerance) in found.items() if difference > tolerance}


def run_config(tmp_path, backbone, **sections):
    return write_config(tmp_path / "c.yaml", tmp_path / "data", tmp_path / "run", network=backbone, **sections)


def imported_learners(run_dir):
    cfg = config.load(Path(run_dir) / "config.yaml")
    return load_learners(run_dir, cfg, CPU)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_key_map_pairs_every_tensor_with_the_same_shape_and_dtype(backbone):
    state = drawn_state(backbone, 0)
    ours = models.build(models.backbone_args(config.Model(network=backbone), 32)).state_dict()
    renamed = {published.our_name(key): tensor for key, tensor in state.items()}
    assert len(state) == len(renamed) == len(ours)
    assert set(renamed) == set(ours)
    layers = [name for name in renamed if name != "memory"]  # MemAE's memory comes first here: a parameter of its own
    assert layers == [name for name in ours if name != "memory"]  # the same layers in the same order
    for name, tensor in renamed.items():
        assert tensor.shape == ours[name].shape and tensor.dtype == ours[name].dtype, name
        assert published.our_name(published.published_name(name)) == name


@pytest.mark.parametrize("backbone", BACKBONES)
def test_imported_learners_equal_the_published_outputs_and_scores(backbone, tmp_path):
    folder = save_published(tmp_path / "published", backbone)
    with nullcontext() if torch.cuda.is_available() else pytest.raises(RuntimeError):
        torch.load(folder / "train" / "0.pth", weights_only=True)  # the files really are CUDA ones
    result = run_cli("scripts/import_published.py", "--published", folder, "--config", run_config(tmp_path, backbone))
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "run"
    assert sorted(path.name for path in run_dir.iterdir()) == ["config.yaml", "imported.json", "learner_0.pt",
                                                                "learner_1.pt"]
    found = differences(imported_learners(run_dir), backbone)
    print(backbone, {name: float(difference) for name, (difference, _) in found.items()})
    assert not failing(found), found
    for index in range(2):
        state = checkpoint.load(checkpoint.learner_path(run_dir, index))
        assert state["epoch"] == 2 and state["optimizer"] is None and state["rng"] is None
        source = folder / "train" / f"{index}.pth"
        assert state["imported"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert [key for key, _ in state["imported"]["keys"]] == [key for key, _ in spec(backbone)["keys_shapes"]]


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("first, second", [
    ("en_block4.model.0.weight", "de_block1.model.0.weight"),  # two convolutions
    ("en_block2.model.1.running_mean", "en_block2.model.1.bias"),  # a BatchNorm statistic and its shift
    ("bottle_neck.linear_enc.1.running_var", "bottle_neck.linear_dec.1.running_var"),
    ("de_block2.model.1.weight", "de_block2.model.1.running_var"),  # the decoder alone: z stays the same
])
def test_a_swapped_tensor_fails_the_comparison(backbone, first, second, tmp_path):
    folder = save_published(tmp_path / "published", backbone, change=swap(first, second))
    found = differences(imported_learners(import_published(folder, run_config(tmp_path, backbone), [], log=print)),
                        backbone)
    decoder_only = first.startswith("de_block")
    expected = {"learner1_x_hat", "rec", "unc", "dsu"} | (set() if decoder_only else {"learner1_features"})
    assert expected <= failing(found) and not {name for name in failing(found) if name.startswith("learner0")}


def test_a_mis_mapped_tensor_fails_the_comparison(tmp_path, monkeypatch):
    """en_block4 and de_block1 have the same shapes: mapping one to the other's place loads, and the numbers say so."""
    renames = dict(published.RENAMES)
    renames["en_block4.model."], renames["de_block1.model."] = renames["de_block1.model."], renames["en_block4.model."]
    monkeypatch.setattr(published, "RENAMES", tuple(renames.items()))
    folder = save_published(tmp_path / "published", "AE")
    found = differences(imported_learners(import_published(folder, run_config(tmp_path, "AE"), [], log=print)), "AE")
    assert {"learner0_x_hat", "learner0_features", "learner1_x_hat", "learner1_features", "dsu"} <= failing(found)


def test_the_published_yaml_is_read_with_the_settings_the_published_code_used(tmp_path, capsys):
    """Its keys this project lacks are named and dropped; its MemAE shrink_thres 0.0, which the published code never
    passed on, becomes the 0.0025 it used (the fixtures cannot tell the two apart: none of their attention weights
    is below 0.0025), and the scores are the published ones."""
    folder = save_published(tmp_path / "published", "MemAE")
    published_yaml = tmp_path / "RSNA_MemAE.yaml"
    published_yaml.write_text(yaml.safe_dump({
        "Exp": {"out_dir": str(folder), "gpu": 6},
        "Model": {"network": "MemAE", "mp": 1, "ls": 16, "mem_dim": 25, "shrink_thres": 0.0,
                  "entropy_loss_weight": 0.0002, "layer": 4},
        "Data": {"dataset": "rsna", "img_size": 32},
        "Solver": {"bs": 64, "lr": 5.0e-4, "weight_decay": 0, "num_epoch": 250, "seed": 7, "Lambda": 1}}))
    importer.main(["--published", str(folder), "--config", str(published_yaml), "Model.num_learners=2",
                   f"Exp.out_dir={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert "ignored config keys this project does not have: Exp.gpu" in out
    assert "Model.shrink_thres=0.0025 (the config says 0.0)" in out
    cfg = config.load(tmp_path / "run" / "config.yaml")
    assert cfg.Model.shrink_thres == 0.0025 and cfg.Solver.num_epoch == 250
    assert not failing(differences(imported_learners(tmp_path / "run"), "MemAE"))


# The published code's RSNA YAMLs (github.com/Rubiscol/D2UE, cfgs/RSNA_<name>.yaml), key for key: AE and AE-U leave
# MemAE's keys empty (Null). They differ only in the lines filled in below.
PUBLISHED_YAML = """Exp:
  out_dir: "output/{folder}/rsna/"
  gpu: 6

Model:
  network: "{network}"  # AE, AE-U, MemAE
  mp: 1  # multiplier that controls the capacity of AE
  ls: 16  # the output size of encoder
{memory}  layer: 4

Data:
  dataset: "rsna"  # rsna, vin
  img_size: 64

Solver:
  bs: 64
  lr: {lr}
  weight_decay: 0
  num_epoch: 250
  seed: {seed}
  Lambda: 1
"""
EMPTY_MEMORY = "  mem_dim: Null\n  shrink_thres: Null\n"
PUBLISHED_YAMLS = {
    "AE": PUBLISHED_YAML.format(folder="AE", network="AE", memory=EMPTY_MEMORY, lr="5.0e-4", seed=8),
    "AE-U": PUBLISHED_YAML.format(folder="AEU", network="AE-U", memory=EMPTY_MEMORY, lr="1.0e-3", seed=2),
    "MemAE": PUBLISHED_YAML.format(folder="MemAE", network="MemAE", lr="5.0e-4", seed=7,
                                   memory="  mem_dim: 25\n  shrink_thres: 0.0\n  entropy_loss_weight: 0.0002\n")}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_each_published_rsna_yaml_imports_its_learners(backbone, tmp_path, capsys):
    """Each published YAML as it is, only the fixtures' image size and learner count overridden: its empty keys
    are named and dropped (their defaults stand), and the imported learners give the published numbers."""
    folder = save_published(tmp_path / "published", backbone)
    published_yaml = tmp_path / "RSNA.yaml"
    published_yaml.write_text(PUBLISHED_YAMLS[backbone])
    importer.main(["--published", str(folder), "--config", str(published_yaml), "Model.num_learners=2",
                   "Data.img_size=32", f"Exp.out_dir={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert "ignored config keys this project does not have: Exp.gpu" in out
    empty_line = f"ignored config keys left empty in {published_yaml}: Model.mem_dim, Model.shrink_thres"
    assert (empty_line in out) == (backbone != "MemAE")
    cfg = config.load(tmp_path / "run" / "config.yaml")
    stated = yaml.safe_load(PUBLISHED_YAMLS[backbone])
    assert cfg.Model.network == backbone and cfg.Model.mem_dim == config.Model().mem_dim == 25
    assert (cfg.Solver.lr, cfg.Solver.seed) == (stated["Solver"]["lr"], stated["Solver"]["seed"])
    record = json.loads((tmp_path / "run" / "imported.json").read_text())
    assert record["empty_keys"] == ([] if backbone == "MemAE" else ["Model.mem_dim", "Model.shrink_thres"])
    assert not failing(differences(imported_learners(tmp_path / "run"), backbone))


def test_eval_and_predict_score_an_imported_run_and_train_refuses_it(tiny_root, tmp_path):
    folder = save_published(tmp_path / "published", "AE")
    cfg_path = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "run")
    run_dir = import_published(folder, cfg_path, [], log=print)
    evaluate.main(["--config", str(run_dir / "config.yaml")])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["run"]["imported"] is True and results["diagnostics"]["learners"] == [None, None]
    image = tiny_root / "tiny" / "images" / "test_normal_0000.png"
    predict.main(["--run", str(run_dir), str(image), "--out", str(tmp_path / "predicted")])
    predicted = next(csv.DictReader(open(tmp_path / "predicted" / "predictions.csv")))
    scored = {row["file"]: row for row in csv.DictReader(open(run_dir / "scores.csv"))}[image.name]
    assert float(predicted["dsu"]) == pytest.approx(float(scored["dsu"]), rel=1e-4)

    before = folder_bytes(run_dir)
    for overrides in ([], ["Model.num_learners=3"], ["Solver.num_epoch=3"]):
        result = run_main("train.py", "--config", cfg_path, *overrides)
        line = one_error_line(result)
        assert "imported from the published release" in line and "cannot resume or extend" in line
        assert folder_bytes(run_dir) == before


def folder_bytes(folder) -> dict:
    """Every file of a folder but the run lock's (train.py takes the lock before it looks)."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(Path(folder).rglob("*"))
            if path.is_file() and path.name not in (".lock", ".running")}


def one_error_line(result) -> str:
    """Exit code 2 and stderr one `error:` line, no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def with_gap(folder):
    save_published(folder, "AE", count=3)
    (folder / "train" / "1.pth").unlink()


def with_second(folder, obj):
    """Two published AE files, the second replaced by `obj` as torch.save writes it."""
    save_published(folder, "AE")
    torch.save(obj, folder / "train" / "1.pth")


def cut_short(folder):
    save_published(folder, "AE")
    path = folder / "train" / "1.pth"
    path.write_bytes(path.read_bytes()[:5000])


def published_ae(folder):
    save_published(folder, "AE")


BAD = {  # how the published folder is made, the config's sections, what the error line says
    "no learner files": (lambda folder: (folder / "train").mkdir(parents=True), {}, "no published learners in"),
    "a gap": (with_gap, {}, "has 0.pth, 2.pth but no 1.pth"),
    "a whole model": (lambda folder: with_second(folder, models.build(models.backbone_args(config.Model(), 32))), {},
                      "holds Python objects besides tensors"),
    "a checkpoint, not a state dict": (lambda folder: with_second(folder, {"model": drawn_state("AE", 1), "epoch": 9}),
                                       {}, "is not a state dict (tensor names to tensors) but a dict of 'model'"),
    "cut short": (cut_short, {}, "cannot be read"),
    "AE files as AE-U": (published_ae, {"Model": {"network": "AE-U"}},
                         "de_block4.model.0.weight is (16, 1, 4, 4) where the config needs (16, 2, 4, 4)"),
    "AE files as MemAE": (published_ae, {"Model": {"network": "MemAE"}},
                          "it lacks bottle_neck.memory_module.memory.weight"),
    "another image size": (published_ae, {"Data": {"img_size": 64}}, "Data.img_size=32 (the config has 64)"),
    "fewer learners": (published_ae, {"Model": {"num_learners": 3}}, "holds 2 learners but Model.num_learners=3"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_published_folders_fail_in_one_line_and_write_nothing(case, tmp_path):
    make, sections, fragment = BAD[case]
    make(tmp_path / "published")
    cfg_path = write_config(tmp_path / "c.yaml", tmp_path / "data", tmp_path / "out" / "run",
                            **{"Model": {"network": "AE"}, **sections})
    line = one_error_line(run_main("scripts/import_published.py", "--published", tmp_path / "published",
                                   "--config", cfg_path))
    print(line)
    assert fragment in line
    assert not (tmp_path / "out").exists()  # nothing written at all, not even the run folder's parent


@pytest.mark.parametrize("out_dir", ["existing", "published"])
def test_an_existing_run_folder_or_the_published_one_is_refused_untouched(out_dir, tmp_path):
    folder = save_published(tmp_path / "published", "AE")
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "notes.txt").write_text("mine")
    before = {name: folder_bytes(tmp_path / name) for name in ("existing", "published")}
    cfg_path = write_config(tmp_path / "c.yaml", tmp_path / "data", tmp_path / out_dir)
    line = one_error_line(run_main("scripts/import_published.py", "--published", folder, "--config", cfg_path))
    print(line)
    assert ("exists; an import writes a new one" if out_dir == "existing" else "is the published folder itself") in line
    assert {name: folder_bytes(tmp_path / name) for name in ("existing", "published")} == before
