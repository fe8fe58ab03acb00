"""The grid runner: grid files, torchrun workers, Slurm-style single cells, failures, locks, kill and rerun."""
import contextlib
import csv
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import sweep
from datasets.medad import dataset_dir, load_images, read_split
from tests.conftest import REPO, run_main, write_config
from utils.errors import UserError
from utils.grid import sharing
from utils.grid import grid as grids
from utils.run import checkpoint, config
from utils.run import runlock


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
    lock = runlock.RunLock(cells[0].run_dir)
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


def test_a_cell_whose_shared_learner_is_in_training_is_put_back_and_taken_again_at_the_end(
        two_configs, tmp_path, monkeypatch, capsys):
    """Exp.share_learners: instead of idling while another run trains the learner a cell would take, the worker
    runs the next cell and comes back to it when the counter has no cell left."""
    shared = tmp_path / "shared"
    grid_file = write_grid(tmp_path / "grid.yaml", two_configs[:1], overrides={"Exp.share_learners": str(shared)})
    cells = grids.load(grid_file).cells
    cfg = cells[0].cfg  # seed 1; seed 2's learner 0 has another key
    split = read_split(dataset_dir(cfg.Data.root, cfg.Data.dataset))
    images = sharing.fingerprint([load_images(split.directory, split.train, cfg.Data.img_size, None)])
    folder = shared / sharing.key(cfg, 0, images, [])
    folder.mkdir(parents=True)
    other_run = open(folder / ".lock", "a")  # as a run training learner 0 holds it
    fcntl.flock(other_run, fcntl.LOCK_EX)
    calls, run_cell = [], sweep.run_cell
    monkeypatch.setattr(sharing, "BUSY_AFTER_S", 0.6)  # the grace a copy being written gets (30 s)

    def recorded(cell, wait=True):
        calls.append((cell.index, wait))
        if calls == [(0, True)]:
            pytest.fail("the first try of a cell waits for the shared learner (here: for ever)")
        if cell.index == 0 and wait:  # taken again: nothing of it trained meanwhile; the other run finishes now
            assert not checkpoint.learner_path(cell.run_dir, 0).exists()
            other_run.close()
        return run_cell(cell, wait=wait)

    monkeypatch.setattr(sweep, "run_cell", recorded)
    try:
        assert sweep.main(["--grid", str(grid_file)]) == 0
    finally:
        other_run.close()
    out = capsys.readouterr().out
    assert calls == [(0, False), (1, False), (0, True)]
    assert out.index(f"{cells[0].name}: put back after") < out.index(f"{cells[1].name}: done in") < \
        out.index(f"{cells[0].name}: done in")
    assert all(grids.state(cell) == "done" for cell in cells) and "all 2 cells done" in out
    assert "learner 0: another run is training it" in (cells[0].run_dir / "train.log").read_text()


def workers_of(grid_file) -> list:
    """Pids of the live processes whose command line names the grid file (zombies excluded)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            alive = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            if alive and str(grid_file).encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def test_killed_grid_resumes_without_redoing_finished_cells(tiny_root, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "unused", Solver={"num_epoch": 12})
    grid_file = write_grid(tmp_path / "grid.yaml", [cfg], seeds=[1, 2, 3])  # two workers: one cell waits
    cells = grids.load(grid_file).cells
    process = torchrun("--grid", grid_file, start_new_session=True)  # its own process group, killed as a job is
    deadline = time.monotonic() + 300
    while not any(grids.is_done(cell) for cell in cells) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 120  # the workers, in sessions of their own, get SIGTERM and stop too
    while workers_of(grid_file) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not workers_of(grid_file), "a worker outlived its killed launcher"
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
    path = write_grid(tmp_path / "grid.yaml", [REPO / "cfgs" / "RSNA_AE.yaml"], seeds=[1, 2],
                      vary=[{"Solver.Lambda": [0.0]},
                            {"Model.layer": [3, 5], "Solver.precise_bn": [True]}])
    grid = grids.load(path)
    assert [cell.name for cell in grid.cells] == [
        "rsna_AE_Lambda0_s1", "rsna_AE_Lambda0_s2", "rsna_AE_layer3_precise_bntrue_s1",
        "rsna_AE_layer3_precise_bntrue_s2", "rsna_AE_layer5_precise_bntrue_s1",
        "rsna_AE_layer5_precise_bntrue_s2"]
    baseline, option = grid.cells[0].cfg, grid.cells[4].cfg
    assert (baseline.Solver.Lambda, baseline.Model.layer, baseline.Solver.precise_bn) == (0.0, 4, False)
    assert (option.Solver.Lambda, option.Model.layer, option.Solver.precise_bn) == (1.0, 5, True)
    with pytest.raises(UserError, match="set per cell by the grid"):  # a key of any mapping
        grids.load(path, ["Solver.precise_bn=false"])


def test_a_preset_may_not_set_what_the_grid_sets_or_varies(tmp_path):
    """A preset's keys are checked as Section.key overrides are: with ablation.yaml the recommended preset would train
    Lambda 0 in the cells named Lambda1, and with paper.yaml write into the published grid's folders."""
    for grid, key in (("ablation.yaml", "Solver.Lambda"), ("paper.yaml", "Exp.out_dir")):
        with pytest.raises(UserError, match=f"preset cfgs/presets/recommended.yaml sets {key}"):
            grids.load(REPO / "cfgs" / "grids" / grid, ["cfgs/presets/recommended.yaml"])
    preset = tmp_path / "lambda.yaml"
    preset.write_text(yaml.safe_dump({"Solver": {"Lambda": 0.5}}))
    with pytest.raises(UserError, match="which the grid varies"):
        grids.load(REPO / "cfgs" / "grids" / "ablation.yaml", [str(preset)])
    preset.write_text(yaml.safe_dump({"Solver": {"num_epoch": 7}}))  # a key the grid leaves alone
    grid = grids.load(REPO / "cfgs" / "grids" / "ablation.yaml", [str(preset)])
    assert {cell.cfg.Solver.num_epoch for cell in grid.cells} == {7}
    assert all(cell.cfg.Solver.Lambda == cell.variant["Solver.Lambda"] for cell in grid.cells)


def test_the_recommended_grid_is_the_preset_on_the_four_data_sets_in_folders_of_its_own():
    grid = grids.load(REPO / "cfgs" / "grids" / "recommended.yaml")
    paper = grids.load(REPO / "cfgs" / "grids" / "paper.yaml")
    assert {cell.config_path for cell in grid.cells} == {f"cfgs/{name}_AE.yaml" for name in ("RSNA", "Vin",
                                                                                          "BraTumor", "LAG")}
    assert {cell.seed for cell in grid.cells} == {cell.seed for cell in paper.cells}
    for cell in grid.cells:  # the preset's settings exactly, whatever else the configs say
        preset = config.load(REPO / cell.config_path, ["cfgs/presets/recommended.yaml", f"Solver.seed={cell.seed}"])
        assert config.experiment(cell.cfg) == config.experiment(preset)
    assert not {cell.run_dir for cell in grid.cells} & {cell.run_dir for cell in paper.cells}


def test_shipped_grids_load():
    sizes = {"paper.yaml": 60, "ablation.yaml": 36, "demo.yaml": 3, "recommended.yaml": 20,
             "latent_size_choice.yaml": 4}  # the studies' grids
    # live in studies/<name>/
    assert sizes.keys() == {path.name for path in (REPO / "cfgs" / "grids").glob("*.yaml")}
    for name, size in sizes.items():
        grid = grids.load(REPO / "cfgs" / "grids" / name)
        assert len(grid.cells) == size
        assert grid.folder == Path("runs") / name.removesuffix(".yaml")
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


def test_a_slurm_task_stopped_by_its_signal_leaves_the_cell_to_the_next_launch(tiny_root, tmp_path):
    """#SBATCH --signal=B:USR1 signals the batch shell: exec makes that python, which checkpoints the cell and
    exits 138; the cell is not failed, and the next launch resumes it."""
    cfg = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "unused", Solver={"num_epoch": 16},
                       Exp={"checkpoint_every_s": 3600.0})
    grid_file = write_grid(tmp_path / "grid.yaml", [cfg], seeds=[1])
    cell = grids.load(grid_file).cells[0]
    env = {**os.environ, "PYTHON": sys.executable, "SLURM_ARRAY_TASK_ID": "0", "SLURM_SUBMIT_DIR": str(REPO)}
    task = subprocess.Popen(["bash", REPO / "scripts" / "slurm_grid.sbatch", str(grid_file)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        metrics, deadline = cell.run_dir / "metrics.jsonl", time.monotonic() + 240
        while not (metrics.is_file() and '"tag": "learner0"' in metrics.read_text()):
            assert task.poll() is None and time.monotonic() < deadline, "waiting for an epoch of learner 0"
            time.sleep(0.01)
        os.kill(task.pid, signal.SIGUSR1)  # to the batch shell's process, as Slurm sends it
        out, err = task.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever the signal left running
            os.killpg(task.pid, signal.SIGKILL)
    assert task.returncode == 128 + signal.SIGUSR1, err
    assert f"{cell.name}: interrupted after" in out and "stopped by SIGUSR1: learner 0 saved after epoch" in out
    assert err.splitlines()[-1] == ("stopped by SIGUSR1: no further cell of grid g taken; "
                                    "rerun the same command to resume")
    assert grids.state(cell) == "partial" and not (cell.run_dir / grids.ERROR).exists()

    assert sweep.main(["--grid", str(grid_file), "--cell", "0"]) == 0  # the next launch
    assert grids.state(cell) == "done"
    assert "learner 0: resuming at epoch" in (cell.run_dir / "train.log").read_text()


def test_cells_share_only_the_chosen_cells_in_the_order_given(two_configs, tmp_path, capsys):
    grid_file = write_grid(tmp_path / "grid.yaml", two_configs[:1], seeds=[1, 2, 3])
    assert sweep.main(["--grid", str(grid_file), "--cells", "2,0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("grid g: 2 of 3 cells in ")
    taken = [line.split(":")[0] for line in out.splitlines() if line.startswith("cell ")]
    assert taken == ["cell 2 of 3 tiny_AE_s3", "cell 0 of 3 tiny_AE_s1"]
    assert "[2 done, 0 failed, 0 running elsewhere, 0 left]" in out  # left counts the chosen cells only
    assert "the 2 cells asked for are done; 2 of the grid's 3 cells are done" in out
    assert "rerun the same command" not in out  # it would run nothing more
    assert [grids.state(cell) for cell in grids.load(grid_file).cells] == ["done", "not started", "done"]
    assert sweep.report(grids.load(grid_file), [1, 2]) == 0  # as a launch with --cells 1,2 stopped early ends
    assert capsys.readouterr().out == ("1 of the 2 cells asked for done, 0 failed, 1 running elsewhere or left "
                                       "(rerun the same command to finish them); 2 of the grid's 3 cells done\n")


@pytest.mark.parametrize("argv, message", [
    (["--cells", "0-3"], "--cells: 3 is not a cell; the grid has cells 0 to 2"),
    (["--cells", "1", "--cell", "1"], "give one of them"),
])
def test_cells_outside_the_grid_or_beside_cell_are_one_clear_line(two_configs, tmp_path, argv, message):
    grid_file = write_grid(tmp_path / "grid.yaml", two_configs[:1], seeds=[1, 2, 3])
    result = run_main("sweep.py", "--grid", grid_file, *argv)
    err = result.stderr
    assert result.returncode == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs" / "g").exists() or not any((tmp_path / "runs" / "g").iterdir())


@pytest.mark.parametrize("text", ["3-1", "a", "1,,2", "-1"])
def test_a_malformed_cell_list_is_a_usage_error(text, capsys):
    with pytest.raises(SystemExit) as exit_:
        sweep.parse_args(["--grid", "g.yaml", "--cells", text])
    assert exit_.value.code == 2 and "argument --cells: invalid cell_list value" in capsys.readouterr().err


def test_a_cell_list_reads_like_slurms_array():
    assert sweep.cell_list("0-3,8") == [0, 1, 2, 3, 8]
    assert sweep.cell_list("5,1-2,2") == [5, 1, 2]  # in the order given, each once
