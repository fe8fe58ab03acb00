"""The run configuration: a typed schema with defaults, loaded from YAML and `Section.key=value` overrides.

Every setting lives here once, with its default and a one-line meaning. Loading validates names and types:
an unknown key or a wrong type is a UserError that names the key (and the closest valid one).
"""
import dataclasses
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from models import MODELS, TAPS
from utils.errors import UserError, unknown

MAX_HOLDOUT = 0.5  # Data.holdout: at most half of the normal images leave training


@dataclass
class Exp:
    out_dir: str = "./runs/{dataset}_{network}_s{seed}"  # run folder; {dataset} {network} {seed} are filled in
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    checkpoint_every_s: float = 60.0  # resumable checkpoint at most this often (and always at a learner's end)
    cache_seniors: bool = True  # the frozen seniors' features computed once per learner, not per batch (same maths)
    cuda_graph: bool = True  # on CUDA, the training step captured as a CUDA graph, checked against an eager step
    tf32: bool = False  # allow TF32 matmul/convolutions on Ampere+ GPUs (faster, less precise)
    score_batch: int = 0  # test-time batch size; 0 = chosen from memory
    workers: int = 0  # image decoding threads; 0 = all cores
    share_learners: str = ""  # grids only: folder where runs share each learner that would come out the same
    # (utils/grid/sharing.py)


@dataclass
class Model:
    network: str = "AE"  # AE | AE-U | MemAE
    mp: int = 1  # width multiplier: channels 16*mp, 32*mp, 64*mp
    ls: int = 16  # latent size
    layer: int = 4  # feature tap for RAR: 0-3 encoder blocks, 4 = z, 5 = bottleneck output, 6-8 decoder blocks
    num_learners: int = 3  # K, at least 2: unc and dsu are disagreements between learners
    mem_dim: int = 25  # MemAE: memory slots
    shrink_thres: float = 0.0025  # MemAE: hard-shrinkage threshold (the value every published run used)
    entropy_loss_weight: float = 0.0002  # MemAE: weight of the attention entropy loss


@dataclass
class Data:
    root: str = "./Med-AD"  # folder holding the data sets
    dataset: str = "rsna"  # rsna | vin | brain | lag | demo, or any folder name under root
    img_size: int = 64  # S; a multiple of 16
    holdout: float = 0.0  # share of the normal training images kept out of training as the normal reference
    # (seeded by Solver.seed); 0 trains on every normal image, as published, and refers to the training images


@dataclass
class Solver:
    bs: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.0
    num_epoch: int = 250  # per learner
    seed: int = 8
    Lambda: float = 1.0  # weight of the RAR repulsion term (linear CKA with the seniors); 0: a plain deep ensemble
    precise_bn: bool = False  # after each learner, recompute BatchNorm statistics over the training set (exact average)


@dataclass
class Config:
    Exp: Exp = field(default_factory=Exp)
    Model: Model = field(default_factory=Model)
    Data: Data = field(default_factory=Data)
    Solver: Solver = field(default_factory=Solver)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.Exp.out_dir.format(
            dataset=self.Data.dataset, network=self.Model.network, seed=self.Solver.seed))


SECTIONS = {f.name: f.default_factory for f in fields(Config)}  # section name -> its dataclass

# Options the studies rejected, removed after commit 81a2410 (studies/): a stored config naming one at the behaviour
# the project now always has still loads; any other value is refused with the commit that can run it.
REMOVED = {"Model.repulsion": "linear_cka", "Model.repel_on": "training", "Solver.spread": 0.0}
LAST_WITH_REMOVED = "81a2410"
RENAMED = {"Exp.fast": ("Exp.cache_seniors", "Exp.cuda_graph")}  # an old key sets its successors


def _coerce(where: str, value, kind):
    """Check one value against its field type; ints are accepted where floats are expected."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, str):  # YAML reads 5e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    raise UserError(f"config {where} must be {kind.__name__}, got {type(value).__name__} {value!r}")


def _check(cfg: Config) -> Config:
    if cfg.Model.network not in MODELS:
        raise UserError(unknown("config Model.network", cfg.Model.network, MODELS))
    if cfg.Data.img_size < 16 or cfg.Data.img_size % 16:
        raise UserError(f"config Data.img_size must be a positive multiple of 16, got {cfg.Data.img_size}")
    if not 0 <= cfg.Model.layer < len(TAPS):
        raise UserError(f"config Model.layer must be 0..{len(TAPS) - 1} ({', '.join(TAPS)}), got {cfg.Model.layer}")
    if cfg.Model.num_learners < 2:
        raise UserError(f"config Model.num_learners must be at least 2 (unc and dsu measure how the learners "
                        f"disagree), got {cfg.Model.num_learners}")
    positive = {"Model.mp": cfg.Model.mp, "Model.ls": cfg.Model.ls,
                "Model.mem_dim": cfg.Model.mem_dim, "Solver.bs": cfg.Solver.bs, "Solver.lr": cfg.Solver.lr,
                "Solver.num_epoch": cfg.Solver.num_epoch}
    for name, value in positive.items():
        if value <= 0:
            raise UserError(f"config {name} must be positive, got {value}")
    if not 0 <= cfg.Data.holdout <= MAX_HOLDOUT:
        raise UserError(f"config Data.holdout must be between 0 and {MAX_HOLDOUT} (a share of the normal training "
                        f"images), got {cfg.Data.holdout}")
    device = cfg.Exp.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise UserError(f"config Exp.device must be auto, cpu, cuda or cuda:N, got '{device}'")
    try:
        cfg.run_dir
    except (KeyError, IndexError, ValueError) as err:
        raise UserError(f"config Exp.out_dir '{cfg.Exp.out_dir}' has a bad placeholder ({err}); "
                        "use {dataset}, {network} or {seed}") from None
    return cfg


def from_dict(raw: dict) -> Config:
    """Build a validated Config from a nested dict (YAML or a checkpoint's stored config)."""
    if not isinstance(raw, dict):
        raise UserError("config must be a mapping of sections (Exp, Model, Data, Solver)")
    sections = {}
    for section, values in raw.items():
        if section not in SECTIONS:
            raise UserError(unknown("config section", section, SECTIONS))
        values = values or {}
        if not isinstance(values, dict):
            raise UserError(f"config section {section} must be a mapping, got {type(values).__name__}")
        schema = {f.name: f.type for f in fields(SECTIONS[section])}
        checked = {}
        for key, value in _current(section, values).items():
            if key not in schema:
                raise UserError(unknown("config key", f"{section}.{key}", [f"{section}.{name}" for name in schema]))
            checked[key] = _coerce(f"{section}.{key}", value, schema[key])
        sections[section] = SECTIONS[section](**checked)
    return _check(Config(**sections))


def _current(section: str, values: dict) -> dict:
    """A section's values with removed keys at the project's one behaviour dropped (REMOVED) and renamed keys
    mapped to their successors (RENAMED); a removed option at another value is a UserError."""
    current = {}
    for key, value in values.items():
        name = f"{section}.{key}"
        if name in REMOVED:
            if value != REMOVED[name]:
                raise UserError(f"config {name}={value} is an option this project no longer has (its study found it "
                                f"did not help; see studies/); commit {LAST_WITH_REMOVED} still runs it: git checkout "
                                f"{LAST_WITH_REMOVED}")
        elif name in RENAMED:
            current.update({successor.partition(".")[2]: value for successor in RENAMED[name]})
        else:
            current[key] = value
    return current


def apply_overrides(raw: dict, overrides: typing.Sequence) -> dict:
    """Apply overrides to a nested dict, in order: `Section.key=value` strings (values parsed as YAML scalars),
    (`Section.key`, value) pairs (values as they are, e.g. from a grid file), or the path of a preset, a YAML file of
    sections whose every key is applied (cfgs/presets/)."""
    for item in overrides:
        if is_preset(item):
            preset = read(item)
            for section, values in preset.items():
                if not isinstance(values, dict):
                    raise UserError(f"preset {item}: section {section} must be a mapping")
                apply_overrides(raw, [(f"{section}.{key}", value) for key, value in values.items()])
            continue
        if isinstance(item, tuple):
            name, value = item
            section, dot, key = str(name).partition(".")
            if not dot or not key:
                raise UserError(f"setting '{name}' must look like Section.key, e.g. Solver.num_epoch")
        else:
            section, key, value = _parse_override(item)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UserError(f"config section {section} must be a mapping")
        raw[section][key] = value
    return raw


def is_preset(item) -> bool:
    """A preset file rather than a Section.key=value override: a string naming a .yaml file, without '='."""
    return isinstance(item, str) and "=" not in item and item.endswith((".yaml", ".yml"))


def _parse_override(item: str):
    name, sep, text = item.partition("=")
    section, dot, key = name.partition(".")
    if not sep or not dot or not key:
        raise UserError(f"override '{item}' must look like Section.key=value, e.g. Solver.num_epoch=30")
    if not text.strip():
        raise UserError(f"override '{item}' has no value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    return section, key, value


def load(path, overrides=()) -> Config:
    """Read a YAML config file, apply overrides, validate."""
    return from_dict(apply_overrides(read(path), overrides))


def read_yaml(path, what):
    """A YAML file's content; a missing file or invalid YAML is a UserError naming the file as `what` (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise UserError(f"{what} {path} is not valid YAML{f' at line {mark.line + 1}' if mark else ''}") from None


def read(path) -> dict:
    """A YAML config file's sections, unvalidated."""
    raw = read_yaml(path, "config file") or {}
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping of sections (Exp, Model, Data, Solver)")
    return raw


# What makes two runs the same experiment, decided here once: checkpoints and run folders refuse a mix, results.json
# records it, a grid cell is done when its results.json is of it, and summaries pool the replicates of one.
NOT_THE_EXPERIMENT = ("Data.root",)  # where the data sit
GROWS = ("Model.num_learners",)  # a run folder may gain learners: learner k never depends on how many follow it
REPLICATE = ("Solver.seed",)  # runs that differ only in these are replicates of one experiment
EXPERIMENT_SECTIONS = ("Model", "Data", "Solver")


def experiment(cfg, without=()) -> dict:
    """{"Section.key": value} of every setting that identifies the experiment of `cfg` (a Config or its dict), but
    `without`. A setting a stored dict lacks was added after it was written and counts as its default, which is the
    behaviour that run had."""
    raw = cfg.to_dict() if isinstance(cfg, Config) else cfg
    defaults = Config().to_dict()
    return {f"{section}.{key}": (raw.get(section) or {}).get(key, default)
            for section in EXPERIMENT_SECTIONS for key, default in defaults[section].items()
            if f"{section}.{key}" not in (*NOT_THE_EXPERIMENT, *without)}


def bare(name: str) -> str:
    """Section.key -> key (no key appears in two sections)."""
    return name.partition(".")[2]


def hyperparameters(cfg: Config) -> dict:
    """Every Model, Data and Solver setting under its bare name."""
    raw = cfg.to_dict()
    return {key: value for section in EXPERIMENT_SECTIONS for key, value in raw[section].items()}


def run_settings(cfg) -> dict:
    """What results.json records of a run: its experiment, under bare names."""
    return {bare(name): value for name, value in experiment(cfg).items()}


def is_run_of(run: dict, cfg) -> bool:
    """Whether a results.json's "run" record is of the experiment of `cfg` (keys it lacks count as defaults; a
    removed option must be at the behaviour the project kept)."""
    defaults = run_settings(Config())
    return (all(run.get(key, defaults[key]) == value for key, value in run_settings(cfg).items())
            and all(run.get(bare(name), kept) == kept for name, kept in REMOVED.items()))


def save(cfg: Config, path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
