"""A run folder of this project from learners the published code trained: the resolved config, the learners in our
checkpoint format and a record of where they came from, written whole or not at all, into a folder that is new."""
import json
import os
import shutil
from dataclasses import fields
from pathlib import Path

import models
from models import published
from utils.atomic import atomic_write_text
from utils.errors import UserError
from utils.run import checkpoint, config, published_files


def read_config(path, overrides, log):
    """(config, what the import changed of it): ours, or the published YAML the learners were trained with. Keys
    this project lacks (Exp.gpu) and keys left empty (the published AE and AE-U YAMLs' `mem_dim: Null`) are dropped
    and named; the settings the published code made every learner with whatever its config said
    (models/published.py) are set so."""
    raw = config.read(path)
    ignored, empty = [], []
    for section, values in raw.items():
        if section in config.SECTIONS and isinstance(values, dict):
            known = {item.name for item in fields(config.SECTIONS[section])}
            ignored += [f"{section}.{key}" for key in values if key not in known]
            empty += [f"{section}.{key}" for key, value in values.items() if key in known and value is None]
            raw[section] = {key: value for key, value in values.items() if key in known and value is not None}
    if ignored:
        log(f"ignored config keys this project does not have: {', '.join(ignored)}")
    if empty:
        log(f"ignored config keys left empty in {path}: {', '.join(empty)} (their defaults stand)")
    cfg = config.from_dict(config.apply_overrides(raw, overrides))
    stated = config.experiment(cfg)
    replaced = {name: value for name, value in published.built_with(cfg.Model.network).items()
                if stated[name] != value}
    if replaced:
        log(f"set {', '.join(f'{name}={value} (the config says {stated[name]})' for name, value in replaced.items())}"
            f": the published code made every {cfg.Model.network} learner so, whatever its config said")
        cfg = config.from_dict(config.apply_overrides(cfg.to_dict(), list(replaced.items())))
    return cfg, {"ignored_keys": ignored, "empty_keys": empty, "set_as_published": replaced}


def learner_checkpoints(folder, cfg, log) -> list:
    """Model.num_learners learners of the published folder as our checkpoints, each tensor checked."""
    files = published_files.learner_files(folder)
    count = cfg.Model.num_learners
    if len(files) < count:
        raise UserError(f"{Path(folder) / 'train'} holds {len(files)} learners but Model.num_learners={count}; "
                        f"set Model.num_learners={len(files)}")
    if len(files) > count:
        log(f"importing learners 0-{count - 1} of the {len(files)} in {Path(folder) / 'train'} (Model.num_learners="
            f"{count}); the published evaluation scores all {len(files)}")
    states = []
    for index, path in enumerate(files[:count]):
        state, sha256 = published_files.read_state(path)
        learner = published_files.learner_from(state, cfg.Model, cfg.Data.img_size, path)
        record = {"from": published.SOURCE, "file": str(path.resolve()), "sha256": sha256,
                  "keys": [[key, published.our_name(key)] for key in state]}
        states.append({"learner": index, "epoch": cfg.Solver.num_epoch,
                       "backbone": models.backbone_args(cfg.Model, cfg.Data.img_size), "config": cfg.to_dict(),
                       "model": learner.state_dict(), "optimizer": None, "rng": None, "report": None,
                       "imported": record})
    return states


def check_new(run_dir, folder) -> None:
    """The run folder must be new: an import never writes into an existing one, the published folder included."""
    if Path(run_dir).resolve() == Path(folder).resolve():
        raise UserError(f"Exp.out_dir {run_dir} is the published folder itself (the published YAML names it); set "
                        "Exp.out_dir=./runs/<name> for this project's run folder")
    if Path(run_dir).exists():
        raise UserError(f"run folder {run_dir} exists; an import writes a new one: remove it or set Exp.out_dir=...")


def write_run(run_dir, cfg, states, record) -> None:
    """Everything goes into a folder beside run_dir, renamed into place at the end."""
    run_dir = Path(run_dir)
    staging = run_dir.with_name(f".{run_dir.name}.{os.getpid()}.tmp")
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # a killed import of this pid's predecessor
        staging.mkdir()
        config.save(cfg, staging / "config.yaml")
        for state in states:
            checkpoint.save(state, checkpoint.learner_path(staging, state["learner"]))
        atomic_write_text(staging / "imported.json", json.dumps(record, indent=2))
        check_new(run_dir, record["published_folder"])  # not made meanwhile: rename would replace an empty folder
        os.rename(staging, run_dir)
    except OSError as err:
        raise UserError(f"cannot write run folder {run_dir} ({err.strerror}); set Exp.out_dir=...") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def import_published(folder, config_path, overrides, log=print) -> Path:
    """Make the run folder of the config's Exp.out_dir from the published folder's learners; returns it."""
    cfg, changes = read_config(config_path, overrides, log)
    run_dir = cfg.run_dir
    check_new(run_dir, folder)
    states = learner_checkpoints(folder, cfg, log)
    record = {"from": published.SOURCE, "published_folder": str(Path(folder).resolve()),
              "config": str(config_path), **changes,
              "learners": [{key: state["imported"][key] for key in ("file", "sha256")} for state in states],
              "carried_over": "weights and BatchNorm statistics; no optimizer or RNG state, no training log"}
    write_run(run_dir, cfg, states, record)
    return run_dir
