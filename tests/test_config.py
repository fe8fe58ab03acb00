"""Config schema: published settings in the shipped files, overrides, and clear errors."""
from pathlib import Path

import pytest

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
                                               "Exp.fast=false", "Model.network=MemAE"])
    assert cfg.Solver.num_epoch == 30 and cfg.Data.root == "/data/Med-AD"
    assert cfg.Solver.lr == 1e-3 and cfg.Exp.fast is False and cfg.Model.network == "MemAE"


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
    (["Exp.fast=3"], "config Exp.fast must be bool, got int 3"),
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


def test_readme_documents_every_key():
    readme = (CFGS.parent / "README.md").read_text()
    for section, schema in config.SECTIONS.items():
        for field in config.fields(schema):
            assert f"`{section}.{field.name}`" in readme, f"{section}.{field.name} missing from README"


def test_repulsion_names_match_the_registry():
    from utils.method.cka import REPULSIONS
    for name in REPULSIONS:  # every similarity of the registry is a valid Model.repulsion
        assert config.load(CFGS / "RSNA_AE.yaml", [f"Model.repulsion={name}"]).Model.repulsion == name


def test_repulsion_and_precise_bn_defaults_are_the_published_behaviour():
    cfg = config.load(CFGS / "RSNA_AE.yaml")
    assert cfg.Model.repulsion == "linear_cka" and cfg.Solver.precise_bn is False


@pytest.mark.parametrize("overrides", [["Model.repulsion=cca"], ["Model.repulsion=debiased_cca", "Solver.bs=18"],
                                       ["Model.repulsion=rbf_cka", "Model.layer=0"],
                                       ["Model.repulsion=debiased_cka", "Solver.bs=4"], ["Solver.precise_bn=true"],
                                       ["Model.repel_on=pasted"]])
def test_new_options_load(overrides):
    cfg = config.load(CFGS / "RSNA_AE.yaml", overrides)
    assert cfg.Model.repel_on == ("pasted" if "Model.repel_on=pasted" in overrides else "training")
    assert cfg.Model.repulsion == (overrides[0].split("=")[1] if "repulsion" in overrides[0] else "linear_cka")
    assert cfg.Solver.precise_bn is ("Solver.precise_bn=true" in overrides)


@pytest.mark.parametrize("overrides, message", [
    (["Model.repulsion=debiasedcka"], "unknown config Model.repulsion 'debiasedcka'; did you mean 'debiased_cka'?"),
    (["Model.repulsion=linear-cka"], "did you mean 'linear_cka'?"),
    (["Model.repulsion=kernel"], "unknown config Model.repulsion 'kernel'; valid: linear_cka, cca"),
    (["Model.repulsion=cca", "Model.layer=5"], "Model.repulsion=cca whitens the features"),
    (["Model.repulsion=debiased_cca", "Solver.bs=17"], "fewer dimensions than Solver.bs - 1 (16)"),
    (["Model.repulsion=debiased_cka", "Solver.bs=3"], "needs Solver.bs of at least 4"),
    (["Solver.precise_bn=1"], "config Solver.precise_bn must be bool, got int 1"),
    (["Model.repel_on=paste"], "unknown config Model.repel_on 'paste'; did you mean 'pasted'?"),
])
def test_bad_repulsion_settings_name_the_key(overrides, message):
    with pytest.raises(UserError) as err:
        config.load(CFGS / "RSNA_AE.yaml", overrides)
    assert message in str(err.value)


def test_new_keys_are_part_of_the_run_identity():
    from utils.run import checkpoint
    base = config.load(CFGS / "RSNA_AE.yaml").to_dict()
    for override in ("Model.repulsion=cca", "Solver.precise_bn=true", "Model.repel_on=pasted"):
        other = config.load(CFGS / "RSNA_AE.yaml", [override]).to_dict()
        with pytest.raises(UserError, match=override.split("=")[0]):
            checkpoint.check_same_experiment(base, other, "run folder x")


def test_checkpoints_from_before_the_new_keys_still_match():
    """A config stored before Model.repulsion and Solver.precise_bn existed means their defaults (the published
    behaviour), so such runs resume and evaluate; with another value they are refused."""
    from utils.run import checkpoint
    stored = config.load(CFGS / "RSNA_AE.yaml").to_dict()
    del stored["Model"]["repulsion"], stored["Solver"]["precise_bn"]
    checkpoint.check_same_experiment(stored, config.load(CFGS / "RSNA_AE.yaml").to_dict(), "checkpoint x")
    with pytest.raises(UserError, match="made with Model.repulsion='linear_cka' but this config has 'cca'"):
        checkpoint.check_same_experiment(stored, config.load(CFGS / "RSNA_AE.yaml", ["Model.repulsion=cca"]).to_dict(),
                                         "checkpoint x")


def test_one_definition_of_an_experiment_serves_checkpoints_results_grids_and_summaries():
    """Every Model, Data and Solver setting but where the data sit identifies the experiment, in every place that
    asks; K may grow in a run folder, and the seed separates replicates only."""
    from utils.run import checkpoint
    from utils.grid.summary import _identity
    base = config.load(CFGS / "RSNA_AE.yaml")
    changed = {"Model.network": "MemAE", "Model.mp": 2, "Model.ls": 8, "Model.layer": 3, "Model.mem_dim": 9,
               "Model.shrink_thres": 0.1, "Model.entropy_loss_weight": 0.1, "Model.repulsion": "cca",
               "Model.repel_on": "pasted",
               "Data.dataset": "vin", "Data.img_size": 32, "Data.holdout": 0.1, "Solver.bs": 32, "Solver.lr": 0.1,
               "Solver.weight_decay": 0.1, "Solver.num_epoch": 3, "Solver.Lambda": 0.5, "Solver.spread": 0.5,
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
