"""The grid runner: grid files, torchrun workers, Slurm-style single cells, failures, locks, kill and rerun."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import sweep
from tests.conftest import REPO, write_config
from utils import grid as grids
from utils.errors import UserError


def write_grid(path, configs, seeds=(1, 2), out_dir=None, **extra):
    raw = {"name": "g", "out_dir": str(out_dir or path.parent / "runs"), "configs": [str(c) for c in configs],
           "seeds": list(seeds), **extra}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))  # vary's order is the variants' order
    return path


@pytest.fixture
def two_configs(tiny_root, tmp_path):
    """An AE and an AE-U config on the tiny data set, one epoch per learner."""
    return [write_config(tmp_path / f"{network}.yaml", tiny_root, tmp_path / "unused", network=network,
                         Solver={"num_epoch": 1}) for network in ("AE", "AE-U")]


def scores(run_dir):
    return (run_dir / "scores.csv").read_text()


def torchrun(*args, workers=2, **popen):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}",
               "sweep.py", *map(str, args)]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def test_torchrun_workers_run_every_cell_once_and_equal_single_cells(two_configs, tmp_path):
    grid_file = write_grid(tmp_path / "grid.yaml", two_configs)
    process = torchrun("--grid", grid_file)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    grid = grids.load(grid_file)
    assert [cell.name for cell in grid.cells] == ["tiny_AE_s1", "tiny_AE_s2", "tiny_AE-U_s1", "tiny_AE-U_s2"]
    for cell in grid.cells:
        assert grids.state(cell) == "done"
        log = (cell.run_dir / "train.log").read_text()
        assert log.count("run folder") == 1 and "finished earlier" not in log, log  # trained once, by one worker
        assert output.count(f" {cell.name}: done in ") == 1, output
    summary = (tmp_path / "runs" / "g" / "summary.md").read_text()
    assert "| tiny (custom split) | AE |" in summary and "| tiny (custom split) | AE-U |" in summary
    assert "dsu AUC" in summary
    with open(tmp_path / "runs" / "g" / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(row["n_seeds"] == "2" for row in rows) and "dsu_auc_mean" in rows[0]

    # Each cell alone (as a Slurm array task runs it), into another folder: the same scores, bit for bit.
    for cell in grid.cells:
        assert sweep.main(["--grid", str(grid_file), "--cell", str(cell.index), "--out", str(tmp_path / "alone")]) == 0
        assert scores(tmp_path / "alone" / "g" / cell.name) == scores(cell.run_dir)
    assert (tmp_path / "alone" / "g" / "summary.md").is_file()  # the last cell to finish writes it


def test_a_failing_cell_is_recorded_and_the_others_finish(two_configs, tiny_root, tmp_path, capsys):
    broken = write_config(tmp_path / "broken.yaml", tiny_root, tmp_path / "unused", Data={"dataset": "absent"},
                          Solver={"num_epoch": 1})
    grid_file = write_grid(tmp_path / "grid.yaml", [two_configs[0], broken], seeds=[1])
    assert sweep.main(["--grid", str(grid_file)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("failed: cell 1 absent_AE_s1: data set folder") and "absent" in lines[-1]
    grid = grids.load(grid_file)
    assert [grids.state(cell) for cell in grid.cells] == ["done", "failed"]
    assert not (tmp_path / "runs" / "g" / "summary.md").exists()  # not every cell is done

    sweep.main(["--grid", str(grid_file), "--list"])
    listing = capsys.readouterr().out
    assert "tiny_AE_s1" in listing and " done" in listing and " failed" in listing


def test_a_cell_locked_by_another_launcher_is_skipped(two_configs, tmp_path, capsys):
    grid_file = write_grid(tmp_path / "grid.yaml", two_configs[:1])
    cells = grids.load(grid_file).cells
    lock = grids.CellLock(cells[0].run_dir)
    assert lock.acquire()
    try:
        assert grids.state(cells[0]) == "running"
        assert sweep.main(["--grid", str(grid_file)]) == 0
        out = capsys.readouterr().out
        assert f"{cells[0].name}: running elsewhere" in out and "1 of 2 cells done" in out
        assert not (cells[0].run_dir / "train.log").exists()  # never touched
        assert grids.state(cells[1]) == "done"
    finally:
        lock.release()
    assert grids.state(cells[0]) == "not started"


def test_killed_grid_resumes_without_redoing_finished_cells(tiny_root, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "unused", Solver={"num_epoch": 12})
    grid_file = write_grid(tmp_path / "grid.yaml", [cfg], seeds=[1, 2, 3, 4])
    cells = grids.load(grid_file).cells
    process = torchrun("--grid", grid_file, start_new_session=True)  # its own process group, killed as a job is
    deadline = time.monotonic() + 300
    while not any(grids.is_done(cell) for cell in cells) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = [cell for cell in cells if grids.is_done(cell)]
    assert finished and len(finished) < len(cells), "kill the grid while cells are left"
    stamps = {path: path.stat().st_mtime_ns for cell in finished for path in cell.run_dir.glob("learner_*.pt")}

    rerun = torchrun("--grid", grid_file)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    assert all(grids.is_done(cell) for cell in cells)
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps  # finished cells untouched
    assert output.count("already done") >= len(finished)


@pytest.mark.parametrize("change, message", [
    ({"confgs": []}, "unknown key 'confgs'; did you mean 'configs'?"),
    ({"configs": ["cfgs/Nowhere.yaml"]}, "config file cfgs/Nowhere.yaml not found"),
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"seeds": [1, "two"]}, "each of seeds must be int, got str 'two'"),
    ({"overrides": {"Solver.lrr": 0.1}}, "unknown config key 'Solver.lrr'; did you mean 'Solver.lr'?"),
    ({"overrides": {"Solver.bs": "big"}}, "config Solver.bs must be int, got str 'big'"),
    ({"vary": {"Solver.Lambda": []}}, "vary.Solver.Lambda must be a non-empty list"),
    ({"vary": {"Solver.seed": [1, 2]}}, "Solver.seed is set per cell by the grid"),
    ({"name": "a b"}, "name 'a b' may hold only"),
    ({"vary": []}, "vary must be a mapping of Section.key to lists, or a non-empty list"),
    ({"vary": [{"Solver.Lambda": [0.0]}, {"Solver.bs": 3}]}, "vary[1].Solver.bs must be a non-empty list"),
    ({"vary": [{"Solver.Lambda": [0.0]}, {"Solver.Lambda": [0.0]}]}, "the vary lists give one variant twice"),
])
def test_grid_file_errors_are_one_clear_line(tmp_path, change, message):
    raw = {"configs": ["cfgs/Demo_AE.yaml"], "seeds": [1], **change}
    if "confgs" in change:
        del raw["configs"]
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as err:
        grids.load(path)
    assert message in str(err.value)


def test_grid_errors_on_the_command_line_exit_2_without_traceback(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"configs": ["cfgs/Demo_AE.yaml", "cfgs/Demo_AE.yaml"], "seeds": [1]}))
    result = subprocess.run([sys.executable, "sweep.py", "--grid", str(path)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error:") and "would share the run folder" in result.stderr


def test_variants_get_their_own_folders_and_settings(tmp_path):
    path = write_grid(tmp_path / "grid.yaml", [REPO / "cfgs" / "Demo_AE.yaml"], seeds=[7],
                      overrides={"Solver.num_epoch": 2}, vary={"Solver.Lambda": [0.0, 0.5], "Model.num_learners": [2, 3]})
    grid = grids.load(path, ["Data.root=/somewhere"])
    names = [cell.name for cell in grid.cells]
    assert names == ["demo_AE_Lambda0_num_learners2_s7", "demo_AE_Lambda0_num_learners3_s7",
                     "demo_AE_Lambda0.5_num_learners2_s7", "demo_AE_Lambda0.5_num_learners3_s7"]
    for cell in grid.cells:
        assert cell.cfg.Solver.num_epoch == 2 and cell.cfg.Solver.seed == 7 and cell.cfg.Data.root == "/somewhere"
        assert (cell.cfg.Solver.Lambda, cell.cfg.Model.num_learners) == \
            (cell.variant["Solver.Lambda"], cell.variant["Model.num_learners"])
        assert cell.run_dir == tmp_path / "runs" / "g" / cell.name
    with pytest.raises(UserError, match="set per cell by the grid"):
        grids.load(path, ["Solver.Lambda=1"])


def test_a_list_of_vary_mappings_gives_each_product_in_turn(tmp_path):
    path = write_grid(tmp_path / "grid.yaml", [REPO / "cfgs" / "Demo_AE.yaml"], seeds=[1, 2],
                      vary=[{"Solver.Lambda": [0.0]},
                            {"Model.repulsion": ["cca", "rbf_cka"], "Solver.precise_bn": [True]}])
    grid = grids.load(path)
    assert [cell.name for cell in grid.cells] == [
        "demo_AE_Lambda0_s1", "demo_AE_Lambda0_s2", "demo_AE_repulsioncca_precise_bntrue_s1",
        "demo_AE_repulsioncca_precise_bntrue_s2", "demo_AE_repulsionrbf_cka_precise_bntrue_s1",
        "demo_AE_repulsionrbf_cka_precise_bntrue_s2"]
    baseline, option = grid.cells[0].cfg, grid.cells[4].cfg
    assert (baseline.Solver.Lambda, baseline.Model.repulsion, baseline.Solver.precise_bn) == (0.0, "linear_cka", False)
    assert (option.Solver.Lambda, option.Model.repulsion, option.Solver.precise_bn) == (1.0, "rbf_cka", True)
    with pytest.raises(UserError, match="set per cell by the grid"):  # a key of any mapping
        grids.load(path, ["Solver.precise_bn=false"])


def test_shipped_grids_load():
    sizes = {"paper.yaml": 60, "ablation.yaml": 36, "demo.yaml": 3, "rar_screen.yaml": 24, "rar_study.yaml": 12,
             "rar_seed2.yaml": 4}
    for name, size in sizes.items():
        grid = grids.load(REPO / "cfgs" / "grids" / name)
        assert len(grid.cells) == size
        assert grid.folder == Path("runs") / ("rar_study" if name.startswith("rar") else name.removesuffix(".yaml"))
    paper = grids.load(REPO / "cfgs" / "grids" / "paper.yaml")
    assert {cell.config_path for cell in paper.cells} == {f"cfgs/{p.name}" for p in (REPO / "cfgs").glob("*.yaml")
                                                          if p.name != "Demo_AE.yaml"}


def test_slurm_script_runs_its_array_task(two_configs, tmp_path):
    grid_file = write_grid(tmp_path / "grid.yaml", two_configs[:1], seeds=[1])
    env = {**os.environ, "PYTHON": sys.executable, "SLURM_ARRAY_TASK_ID": "0", "SLURM_SUBMIT_DIR": str(REPO)}
    result = subprocess.run(["bash", REPO / "scripts" / "slurm_grid.sbatch", str(grid_file)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert grids.is_done(grids.load(grid_file).cells[0])
    assert json.loads((tmp_path / "runs" / "g" / "tiny_AE_s1" / "results.json").read_text())["run"]["seed"] == 1


def test_rar_study_table_pools_runs_per_setting(tmp_path):
    """scripts/rar_study.py: one row per (repulsion, precise BN), means and stds over runs as NumPy gives them,
    the juniors' CKA from the seniors' columns of each CKA matrix, Lambda 0 as no repulsion whatever its kind."""
    from tests.conftest import load_script
    study = load_script("rar_study")
    rng = np.random.default_rng(0)
    written = []
    for index, (kind, precise_bn, Lambda, dataset) in enumerate([
            ("linear_cka", False, 1.0, "A"), ("linear_cka", False, 1.0, "B"), ("cca", True, 1.0, "A"),
            ("cca", False, 0.0, "A"), ("linear_cka", False, 0.0, "B")]):
        cka = rng.random((3, 3))
        result = {"run": {"dataset": dataset, "network": "AE", "seed": index, "repulsion": kind,
                          "precise_bn": precise_bn, "Lambda": Lambda},
                  "diagnostics": {"linear_cka": cka.tolist(), "effective_rank": rng.random(3).tolist()},
                  **{score: {"auc": rng.random(), "ap": rng.random()} for score in ("rec", "unc", "dsu")}}
        folder = tmp_path / f"run{index}"
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(result))
        (folder / "metrics.jsonl").write_text("".join(
            json.dumps({"tag": f"learner{k}", "step": e, "effective_rank": 1.0 + k + e}) + "\n"
            for k in range(3) for e in (1, 2)))
        written.append(result)
    assert study.main(["--runs", str(tmp_path), "--figure", str(tmp_path / "rank.png")]) is None
    rows = {(row["repulsion"], row["precise_bn"]): row
            for row in study.study_rows(study.collect(tmp_path))}
    assert set(rows) == {("linear_cka", False), ("cca", True), ("none (Lambda 0)", False)}
    pooled, none = rows["linear_cka", False], rows["none (Lambda 0)", False]
    assert pooled["runs"] == none["runs"] == 2 and pooled["datasets"] == ["A", "B"]
    aucs = np.array([written[0]["dsu"]["auc"], written[1]["dsu"]["auc"]])
    assert pooled["dsu_auc"] == pytest.approx((aucs.mean(), aucs.std(ddof=1)))
    pairs = [np.asarray(written[i]["diagnostics"]["linear_cka"])[[1, 2, 2], [0, 0, 1]].mean() for i in (0, 1)]
    assert pooled["junior_cka"] == pytest.approx(np.mean(pairs))
    assert pooled["junior_rank"] == pytest.approx(np.mean([written[i]["diagnostics"]["effective_rank"][1:]
                                                           for i in (0, 1)]))
    assert pooled["A_dsu"] == pytest.approx(written[0]["dsu"]["auc"])
    assert "| none (Lambda 0) | no | 2 (A/B; seeds 3, 4) |" in (tmp_path / "study.md").read_text()
    assert (tmp_path / "rank.png").is_file()
    curves = study.rank_curves(study.collect(tmp_path))  # juniors 1 and 2 of each run, epochs 1 and 2: 1 + k + e
    assert curves == {"linear_cka": [[3.0, 4.0], [4.0, 5.0]] * 2, "cca + precise BN": [[3.0, 4.0], [4.0, 5.0]],
                      "none (Lambda 0)": [[3.0, 4.0], [4.0, 5.0]] * 2}
