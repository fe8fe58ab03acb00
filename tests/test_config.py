"""Config schema: published settings in the shipped files, overrides, and clear errors."""
from pathlib import Path

import pytest
import yaml

from utils.errors import UserError
from utils.run import config

CFGS = Path(__file__).resolve().parents[1] / "cfgs"

# The published settings (D2UE paper and code): dataset -> {backbone file suffix: (network, lr, seed)}
PUBLISHED = {
    "RSNA": ("rsna", {"AE": ("AE", 5e-4, 8), "AEU": ("AE-U", 1e-3, 2), "MemAE": ("MemAE", 5e-4, 7)}),
    "Vin": ("vin", {"AE": ("AE", 5e-4, 1), "AEU": ("AE-U", 1e-3, 9), "MemAE": ("MemAE", 5e-4, 9)}),
    "BraTumor": ("brain", {"AE": ("AE", 5e-4, 8), "AEU": ("AE-U", 1e-3, 1), "MemAE": ("MemAE", 5e-4, 2)}),
    "LAG": ("lag", {"AE": ("AE", 5e-4, 7), "AEU": ("AE-U", 1e-3, 6), "MemAE": ("MemAE", 5e-4, 9)}),
}
CASES = [(prefix, suffix, dataset, *values) for prefix, (dataset, rows) in PUBLISHED.items()
         for suffix, values in rows.items()]


@pytest.mark.parametrize("prefix, suffix, dataset, network, lr, seed", CASES)
def test_shipped_configs_carry_the_published_settings(prefix, suffix, dataset, network, lr, seed):
    cfg = config.load(CFGS / f"{prefix}_{suffix}.yaml")
    assert (cfg.Data.dataset, cfg.Model.network, cfg.Solver.lr, cfg.Solver.seed) == (dataset, network, lr, seed)
    assert (cfg.Solver.bs, cfg.Solver.num_epoch, cfg.Data.img_size, cfg.Model.ls, cfg.Model.mp) == (64, 250, 64, 16, 1)
    assert (cfg.Model.layer, cfg.Solver.weight_decay, cfg.Solver.Lambda, cfg.Model.num_learners) == (4, 0.0, 1.0, 3)
    assert (cfg.Model.mem_dim, cfg.Model.shrink_thres, cfg.Model.entropy_loss_weight) == (25, 0.0025, 0.0002)
    assert cfg.Exp.device == "auto"


def test_every_shipped_config_has_a_script():
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    for path in CFGS.glob("*.yaml"):
        name = "demo" if path.stem == "Demo_AE" else path.stem
        assert (scripts / f"{name}.sh").is_file(), name


def test_overrides_are_typed_and_win(tmp_path):
    cfg = config.load(CFGS / "RSNA_AE.yaml", ["Solver.num_epoch=30", "Data.root=/data/Med-AD", "Solver.lr=1e-3",
                                               "Exp.cuda_graph=false", "Model.network=MemAE"])
    assert cfg.Solver.num_epoch == 30 and cfg.Data.root == "/data/Med-AD"
    assert cfg.Solver.lr == 1e-3 and cfg.Exp.cuda_graph is False and cfg.Model.network == "MemAE"


def test_run_dir_placeholders():
    cfg = config.load(CFGS / "RSNA_AEU.yaml", ["Solver.seed=5"])
    assert cfg.run_dir == Path("runs/rsna_AE-U_s5")


def test_int_accepted_for_float():
    assert config.from_dict({"Solver": {"lr": 1}}).Solver.lr == 1.0


def test_saved_config_round_trips(tmp_path):
    cfg = config.load(CFGS / "LAG_MemAE.yaml", ["Solver.num_epoch=3"])
    config.save(cfg, tmp_path / "c.yaml")
    assert config.load(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("overrides, message", [
    (["Solver.lrr=0.1"], "unknown config key 'Solver.lrr'; did you mean 'Solver.lr'?"),
    (["Slover.lr=0.1"], "unknown config section 'Slover'; did you mean 'Solver'?"),
    (["Solver.bs=big"], "config Solver.bs must be int, got str 'big'"),
    (["Solver.num_epoch=2.5"], "config Solver.num_epoch must be int, got float 2.5"),
    (["Exp.cuda_graph=3"], "config Exp.cuda_graph must be bool, got int 3"),
    (["Data.img_size=40"], "Data.img_size must be a positive multiple of 16, got 40"),
    (["Model.network=VAE"], "unknown config Model.network 'VAE'"),
    (["Exp.device=gpu0"], "Exp.device must be auto, cpu, cuda or cuda:N"),
    (["Solver.lr=-1"], "Solver.lr must be positive"),
    (["Model.layer=9"], "Model.layer must be 0..8"),
    (["Model.num_learners=1"], "Model.num_learners must be at least 2"),
    (["Solver.lr"], "must look like Section.key=value"),
    (["Solver.lr="], "has no value"),
    (["Exp.out_dir=runs/{data}"], "bad placeholder"),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(UserError) as err:
        config.load(CFGS / "RSNA_AE.yaml", overrides)
    assert message in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        config.load(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("Solver:\n  lr: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        config.load(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        config.load(listed)


def test_docs_document_every_key():
    guide = (CFGS.parent / "docs" / "configuration.md").read_text()
    for section, schema in config.SECTIONS.items():
        for field in config.fields(schema):
            assert f"`{section}.{field.name}`" in guide, f"{section}.{field.name} missing from docs/configuration.md"


def test_precise_bn_default_is_the_published_behaviour():
    cfg = config.load(CFGS / "RSNA_AE.yaml")
    assert cfg.Solver.precise_bn is False and cfg.Solver.Lambda == 1.0


@pytest.mark.parametrize("overrides, message", [
    (["Solver.precise_bn=1"], "config Solver.precise_bn must be bool, got int 1"),
])
def test_bad_settings_name_the_key(overrides, message):
    with pytest.raises(UserError) as err:
        config.load(CFGS / "RSNA_AE.yaml", overrides)
    assert message in str(err.value)


def test_new_keys_are_part_of_the_run_identity():
    from utils.run import checkpoint
    base = config.load(CFGS / "RSNA_AE.yaml").to_dict()
    for override in ("Solver.precise_bn=true", "Data.holdout=0.1"):
        other = config.load(CFGS / "RSNA_AE.yaml", [override]).to_dict()
        with pytest.raises(UserError, match=override.split("=")[0]):
            checkpoint.check_same_experiment(base, other, "run folder x")


def test_checkpoints_from_before_the_new_keys_still_match():
    """A config stored before Solver.precise_bn existed means its default (the published behaviour), so such runs
    resume and evaluate; with another value they are refused."""
    from utils.run import checkpoint
    stored = config.load(CFGS / "RSNA_AE.yaml").to_dict()
    del stored["Solver"]["precise_bn"]
    checkpoint.check_same_experiment(stored, config.load(CFGS / "RSNA_AE.yaml").to_dict(), "checkpoint x")
    with pytest.raises(UserError, match="made with Solver.precise_bn=False but this config has True"):
        checkpoint.check_same_experiment(stored, config.load(CFGS / "RSNA_AE.yaml", ["Solver.precise_bn=true"])
                                         .to_dict(), "checkpoint x")


@pytest.mark.parametrize("name, kept, other", [("Model.repulsion", "linear_cka", "cca"),
                                               ("Model.repel_on", "training", "pasted"),
                                               ("Solver.spread", 0.0, 0.5)])
def test_a_removed_option_loads_at_the_kept_behaviour_and_is_refused_otherwise(tmp_path, name, kept, other):
    """Run folders written before the studies' options left the core: their config.yaml names the option; at the
    behaviour the project kept it loads as before, at another value it is refused in one line naming the option
    and the commit that can still run it."""
    stored = config.load(CFGS / "RSNA_AE.yaml").to_dict()
    section, key = name.split(".")
    stored[section][key] = kept
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(stored))
    assert config.load(path).to_dict() == config.load(CFGS / "RSNA_AE.yaml").to_dict()
    stored[section][key] = other
    path.write_text(yaml.safe_dump(stored))
    with pytest.raises(UserError) as err:
        config.load(path)
    assert str(err.value).startswith(f"config {name}={other} is an option this project no longer has")
    assert "git checkout 81a2410" in str(err.value) and "\n" not in str(err.value)
    run = {**config.run_settings(config.load(CFGS / "RSNA_AE.yaml")), key: kept}  # results.json of such a run
    assert config.is_run_of(run, config.load(CFGS / "RSNA_AE.yaml"))
    assert not config.is_run_of({**run, key: other}, config.load(CFGS / "RSNA_AE.yaml"))


def test_exp_fast_of_earlier_runs_sets_both_of_its_successors(tmp_path):
    stored = config.load(CFGS / "RSNA_AE.yaml").to_dict()
    del stored["Exp"]["cache_seniors"], stored["Exp"]["cuda_graph"]
    for value in (True, False):
        stored["Exp"]["fast"] = value
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(stored))
        cfg = config.load(path)
        assert (cfg.Exp.cache_seniors, cfg.Exp.cuda_graph) == (value, value)


def test_one_definition_of_an_experiment_serves_checkpoints_results_grids_and_summaries():
    """Every Model, Data and Solver setting but where the data sit identifies the experiment, in every place that
    asks; K may grow in a run folder, and the seed separates replicates only."""
    from utils.run import checkpoint
    from utils.grid.summary import _identity
    base = config.load(CFGS / "RSNA_AE.yaml")
    changed = {"Model.network": "MemAE", "Model.mp": 2, "Model.ls": 8, "Model.layer": 3, "Model.mem_dim": 9,
               "Model.shrink_thres": 0.1, "Model.entropy_loss_weight": 0.1,
               "Data.dataset": "vin", "Data.img_size": 32, "Data.holdout": 0.1, "Solver.bs": 32, "Solver.lr": 0.1,
               "Solver.weight_decay": 0.1, "Solver.num_epoch": 3, "Solver.Lambda": 0.5,
               "Solver.precise_bn": True, "Model.num_learners": 5, "Solver.seed": 99, "Data.root": "/elsewhere"}
    assert set(changed) == {f"{section}.{key}" for section in config.EXPERIMENT_SECTIONS
                            for key in config.SECTIONS[section]().__dict__}  # every setting is tried
    for name, value in changed.items():
        other = config.load(CFGS / "RSNA_AE.yaml", [(name, value)])
        mixes = name in (*config.NOT_THE_EXPERIMENT, *config.GROWS)
        if mixes:
            checkpoint.check_same_experiment(base.to_dict(), other.to_dict(), "run folder x")
        else:
            with pytest.raises(UserError, match=name):
                checkpoint.check_same_experiment(base.to_dict(), other.to_dict(), "run folder x")
        same_results = config.is_run_of(config.run_settings(base), other)
        assert same_results == (name in config.NOT_THE_EXPERIMENT), name
        pooled = _identity(config.run_settings(base)) == _identity(config.run_settings(other))
        assert pooled == (name in (*config.NOT_THE_EXPERIMENT, *config.REPLICATE)), name


def test_the_recommended_preset_applies_after_any_config_and_names_its_run_folder(tmp_path):
    preset = str(CFGS / "presets" / "recommended.yaml")
    for name in ("RSNA_AE.yaml", "BraTumor_MemAE.yaml", "LAG_AEU.yaml"):
        published = config.load(CFGS / name)
        recommended = config.load(CFGS / name, [preset])
        assert (recommended.Solver.Lambda, recommended.Solver.precise_bn, recommended.Data.holdout) == (0.0, True, 0.1)
        assert recommended.run_dir != published.run_dir and "recommended" in recommended.run_dir.name
        assert recommended.Model == published.Model and recommended.Solver.num_epoch == published.Solver.num_epoch
    later = config.load(CFGS / "RSNA_AE.yaml", [preset, "Data.holdout=0.2"])  # in order: the later override wins
    assert later.Data.holdout == 0.2
    with pytest.raises(UserError, match="config file .*missing.yaml not found"):
        config.load(CFGS / "RSNA_AE.yaml", [str(tmp_path / "missing.yaml")])
    (tmp_path / "bad.yaml").write_text("Solver:\n  Lamda: 0\n")
    with pytest.raises(UserError, match="did you mean 'Solver.Lambda'"):
        config.load(CFGS / "RSNA_AE.yaml", [str(tmp_path / "bad.yaml")])
