"""Experiment grids: a YAML file naming configs, seeds, shared overrides and `vary:` lists, expanded into cells.

    name: paper                        # optional; default: the file's name
    out_dir: ./runs                    # optional; the grid folder is <out_dir>/<name>
    configs: [cfgs/RSNA_AE.yaml, cfgs/RSNA_AEU.yaml]
    seeds: [1, 2, 3, 4, 5]
    overrides: {Solver.num_epoch: 250}                        # applied to every cell
    vary: {Solver.Lambda: [0, 1], Model.num_learners: [3, 5]}  # their product makes the variants

vary may also be a list of such mappings: the variants are then each mapping's product in turn, for a study that is
not one full product (e.g. every option with one setting, the baseline with another).

Cells are ordered config, then variant, then seed, so an index names the same cell as long as the file is unchanged.
Each cell has its own run folder, <grid folder>/<dataset>_<network>[_<variant>]_s<seed>, and its state is read
from that folder alone: what results.json, the checkpoints, error.txt and its lock (utils/run/runlock.py) say. So any
number of launchers (torchrun workers, a Slurm array, a second shell) can share one grid folder.
"""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import UserError, unknown
from utils.run import checkpoint, config
from utils.run.runlock import is_locked

KEYS = ("name", "out_dir", "configs", "seeds", "overrides", "vary")
SET_BY_GRID = ("Solver.seed", "Exp.out_dir")  # each cell's own
ERROR, RESULTS = "error.txt", "results.json"
REPOSITORY = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Cell:
    index: int
    config_path: str
    seed: int
    variant: dict = field(default_factory=dict)  # {"Section.key": value} of the vary lists
    cfg: config.Config = None

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    @property
    def name(self) -> str:
        return self.run_dir.name

    def describe_variant(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.variant.items()) or "-"


@dataclass(frozen=True)
class Grid:
    name: str
    folder: Path
    cells: list


def load(path, cli_overrides=(), out_dir=None) -> Grid:
    """Read and validate a grid file and expand it into cells; every problem is one UserError naming it.

    cli_overrides (`Section.key=value` strings, e.g. Data.root=...) apply to every cell after the grid's own
    settings; out_dir replaces the file's out_dir.
    """
    path = Path(path)
    raw = _read(path)
    where = f"grid {path}"
    unknown_keys = [key for key in raw if key not in KEYS]
    if unknown_keys:
        raise UserError(f"{where}: {unknown('key', unknown_keys[0], KEYS)}")
    name = _typed(raw.get("name", path.stem), str, f"{where}: name")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise UserError(f"{where}: name '{name}' may hold only letters, digits, '.', '_' and '-'")
    folder = Path(out_dir or _typed(raw.get("out_dir", "./runs"), str, f"{where}: out_dir")) / name
    configs = _nonempty_list(raw, "configs", str, where)
    seeds = _nonempty_list(raw, "seeds", int, where)
    if len(set(seeds)) < len(seeds):
        raise UserError(f"{where}: seeds lists a seed twice ({seeds})")
    overrides = _settings(raw.get("overrides") or {}, f"{where}: overrides")
    variants, varied = _variants(raw.get("vary"), where)
    for item in cli_overrides:
        _check_override(item, varied)
    for key in (*overrides, *varied):
        if key in SET_BY_GRID:
            raise UserError(f"{where}: {key} is set per cell by the grid (seeds, out_dir); remove it")

    cells = []
    for config_path in configs:
        if not _find_config(config_path).is_file():
            raise UserError(f"{where}: config file {config_path} not found")
        for variant in variants:
            for seed in seeds:
                settings = [*overrides.items(), *variant.items()]
                try:
                    cfg = config.load(_find_config(config_path), [*settings, *cli_overrides, ("Solver.seed", seed)])
                except UserError as err:
                    raise UserError(f"{where}, {config_path}: {err}") from None
                run_dir = folder / f"{cfg.Data.dataset}_{cfg.Model.network}{_variant_name(variant)}_s{seed}"
                cfg = config.load(_find_config(config_path), [*settings, *cli_overrides, ("Solver.seed", seed),
                                                ("Exp.out_dir", str(run_dir).replace("{", "{{").replace("}", "}}"))])
                cells.append(Cell(len(cells), config_path, seed, variant, cfg))
    seen = {}
    for cell in cells:
        other = seen.setdefault(cell.run_dir, cell)
        if other is not cell:
            fix = ("the vary lists give one variant twice" if other.config_path == cell.config_path else
                   "give the configs different data sets or backbones, or split the grid")
            raise UserError(f"{where}: cells {other.index} ({other.config_path}) and {cell.index} ({cell.config_path}) "
                            f"would share the run folder {cell.run_dir}; {fix}")
    return Grid(name, folder, cells)


def _check_override(item, varied) -> None:
    """Refuse a command-line override, or a preset's key, that the grid sets per cell or varies: the cells' folders
    are named after the grid's own settings."""
    if not config.is_preset(item):
        if item.partition("=")[0] in (*SET_BY_GRID, *varied):
            raise UserError(f"override '{item}': {item.partition('=')[0]} is set per cell by the grid; "
                            "change it in the grid file")
        return
    keys = [f"{section}.{key}" for section, values in config.read(item).items() if isinstance(values, dict)
            for key in values]
    for owned, what in ((varied, "varies"), (SET_BY_GRID, "sets per cell")):
        for key in keys:
            if key in owned:
                raise UserError(f"preset {item} sets {key}, which the grid {what}; put the preset's settings in the "
                                "grid file's overrides, under a grid name of its own (as cfgs/grids/recommended.yaml "
                                "does for cfgs/presets/recommended.yaml)")


def _find_config(name) -> Path:
    """A config path as given (relative to the current folder), else relative to the repository: cfgs/... work
    from anywhere."""
    path = Path(name)
    return path if path.is_file() or path.is_absolute() else REPOSITORY / path


def _read(path: Path) -> dict:
    raw = config.read_yaml(path, "grid file")
    if not isinstance(raw, dict):
        raise UserError(f"grid file {path} must be a mapping with keys {', '.join(KEYS)}")
    return raw


def _typed(value, kind, where):
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise UserError(f"{where} must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _nonempty_list(raw, key, kind, where):
    if key not in raw:
        raise UserError(f"{where}: '{key}' is missing")
    values = raw[key]
    if not isinstance(values, list) or not values:
        raise UserError(f"{where}: {key} must be a non-empty list, got {values!r}")
    return [_typed(value, kind, f"{where}: each of {key}") for value in values]


def _settings(values, where) -> dict:
    if not isinstance(values, dict):
        raise UserError(f"{where} must be a mapping of Section.key to values, got {type(values).__name__}")
    for key in values:
        if not isinstance(key, str) or key.count(".") != 1:
            raise UserError(f"{where}: '{key}' must look like Section.key, e.g. Solver.num_epoch")
    return dict(values)


def _variants(vary, where):
    """The variants of `vary` (a mapping of lists, or a list of such mappings) and every key any of them sets."""
    blocks = vary if isinstance(vary, list) else [vary or {}]
    if not blocks:
        raise UserError(f"{where}: vary must be a mapping of Section.key to lists, or a non-empty list of them")
    variants, varied = [], {}
    for number, block in enumerate(blocks):
        label = f"{where}: vary" + (f"[{number}]" if isinstance(vary, list) else "")
        block = _settings(block, label)
        for key, values in block.items():
            if not isinstance(values, list) or not values:
                raise UserError(f"{label}.{key} must be a non-empty list of values, got {values!r}")
            varied[key] = True
        variants += _product(block)
    return variants, list(varied)


def _product(vary: dict) -> list:
    """Every combination of the vary lists, the first key varying slowest; [{}] without vary."""
    combinations = [{}]
    for key, values in vary.items():
        combinations = [{**combination, key: value} for combination in combinations for value in values]
    return combinations


def _variant_name(variant: dict) -> str:
    """_Lambda0_num_learners5: each varied setting's bare name and value, safe for a folder name (the data set and
    the backbone are in the folder name already)."""
    parts = []
    for key, value in variant.items():
        if key in ("Data.dataset", "Model.network"):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # Lambda 0, not Lambda0.0
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(key.partition(".")[2] + re.sub(r"[^A-Za-z0-9._+-]", "-", text))
    return "".join(f"_{part}" for part in parts)


# ---------------------------------------------------------------- the state of a cell, read from its run folder

def read_results(cell: Cell):
    """The cell's results.json, or None when it is missing or unreadable."""
    try:
        results = json.loads((cell.run_dir / RESULTS).read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) and isinstance(results.get("run"), dict) else None


def is_done(cell: Cell) -> bool:
    """results.json is there and was written for this cell's settings (K and epochs included)."""
    results = read_results(cell)
    return results is not None and config.is_run_of(results["run"], cell.cfg)


def state(cell: Cell) -> str:
    """done | running (locked by a launcher) | failed | partial (started, or stopped by a signal: the next launch
    resumes it) | not started."""
    if is_done(cell):
        return "done"
    if is_locked(cell.run_dir):
        return "running"
    if (cell.run_dir / ERROR).is_file():
        return "failed"
    if (cell.run_dir / "config.yaml").is_file() or checkpoint.learner_path(cell.run_dir, 0).is_file():
        return "partial"
    return "not started"


def error_of(cell: Cell) -> str:
    try:
        return (cell.run_dir / ERROR).read_text().splitlines()[0]
    except (OSError, IndexError):
        return ""


def record_error(cell: Cell, line: str, details: str = "") -> None:
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    (cell.run_dir / ERROR).write_text(line + "\n" + details)


def clear_error(cell: Cell) -> None:
    (cell.run_dir / ERROR).unlink(missing_ok=True)
