"""Run an experiment grid (cfgs/grids/*.yaml): every cell trained and evaluated, then one table for the whole grid.

    python sweep.py --grid cfgs/grids/paper.yaml Data.root=/data/Med-AD          every cell in turn, one device
    torchrun --nproc_per_node=4 sweep.py --grid cfgs/grids/paper.yaml ...          4 workers share the cells
    python sweep.py --grid cfgs/grids/paper.yaml --list                            the cells and their state
    python sweep.py --grid cfgs/grids/paper.yaml --cell 7                          cell 7 alone (a Slurm array task)
    torchrun --nproc_per_node=2 sweep.py --grid cfgs/grids/paper.yaml --cells 0-3,8  the workers share these cells

Workers take the next unstarted cell from a counter in a torch.distributed TCPStore, so none idles while a cell is
left. Worker i trains on GPU (local rank i) % (GPUs on its node), or on the CPU; several workers may share a GPU,
which is how small runs fill it. A cell is locked while it runs, skipped when it is done or locked by another
launcher, resumed from its checkpoints when it was interrupted, and recorded with its one-line error when it fails
(the others go on). A cell that needs a learner another run is training (Exp.share_learners) is put back, and its
worker takes it again when the counter has no cell left, waiting then if it must. SIGTERM or SIGUSR1 (pre-emption)
stops a worker's cell at the end of an epoch with a checkpoint; the worker takes no further cell and exits with
128 + the signal's number. Rerunning the same command finishes the grid. When every cell is done the grid folder
gets summary.md and summary.csv: mean ± std over seeds, one row per data set, backbone and variant.
"""
import argparse
import ctypes
import os
import signal
import sys
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

import eval as evaluate
import train
from datasets.medad import training_set
from utils.errors import ArgumentParser, Interrupted, UserError, cli
from utils.grid import grid as grids
from utils.grid import sharing
from utils.grid.summary import markdown_wide, summarize, widen, write_summary
from utils.method import batchnorm
from utils.run import runlock, stop
from utils.run.runtime import RunLog, pick_device, set_tf32

PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): the signal a process gets when its parent dies


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True, help="grid file, e.g. cfgs/grids/demo.yaml")
    parser.add_argument("--list", action="store_true", help="print the cells and their state, run nothing")
    parser.add_argument("--cell", type=int, help="run this cell alone (e.g. --cell $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--cells", type=cell_list, help="share only these cells among the workers, in this "
                        "order: indices and ranges as Slurm's --array takes them, e.g. 0-3,8")
    parser.add_argument("--out", help="put the grid folder under this folder instead of the file's out_dir")
    parser.add_argument("overrides", nargs="*", help="Section.key=value for every cell, e.g. Data.root=/data/Med-AD")
    return parser.parse_args(argv)


def cell_list(text: str) -> list:
    """'0-3,8' -> [0, 1, 2, 3, 8]; argparse turns the ValueError into a one-line usage error."""
    cells = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        if not first.strip().isdigit() or (last and not last.strip().isdigit()) or int(last or first) < int(first):
            raise ValueError(part)
        cells += [index for index in range(int(first), int(last or first) + 1) if index not in cells]
    return cells


def follow_launcher() -> None:
    """torchrun starts each worker in a session of its own, so a launcher killed outright (kill -9 of the job's
    process group) would leave its workers training on alone. On Linux the kernel sends a worker SIGTERM when its
    launcher dies instead: it stops at an epoch's end with a checkpoint (utils/run/stop.py), and the next launch
    resumes."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the launcher died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


class Coordinator:
    """The cell counter and the progress counts, shared by every worker of a launch.

    Alone: an in-process store. Under torchrun: a TCPStore opened by rank 0, whose address goes to the other
    workers over a gloo group used for nothing else. Rank 0 hosts the store, so it stays until every worker is done.
    """

    def __init__(self):
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        if self.world_size == 1:
            self.store = dist.HashStore()
            return
        follow_launcher()
        dist.init_process_group("gloo", timeout=timedelta(minutes=30))
        address = [None, None]
        if self.rank == 0:
            self.store = dist.TCPStore(os.environ.get("MASTER_ADDR", "127.0.0.1"), 0, is_master=True,
                                       wait_for_workers=False)
            address = [os.environ.get("MASTER_ADDR", "127.0.0.1"), self.store.port]
        dist.broadcast_object_list(address, src=0)
        if self.rank != 0:
            self.store = dist.TCPStore(address[0], address[1], is_master=False)
        dist.destroy_process_group()

    def next_cell(self) -> int:
        return self.store.add("next", 1) - 1

    def count(self, what: str, by: int = 1) -> int:
        return self.store.add(what, by)

    def finish(self) -> None:
        """Say this worker is done; rank 0 waits for the others (they use its store until then)."""
        self.count("finished")
        while self.rank == 0 and self.count("finished", 0) < self.world_size:
            time.sleep(1)


def worker_device(cfg) -> torch.device:
    """Exp.device auto: this worker's GPU, local rank modulo the GPUs of the node (several workers may share one)."""
    if cfg.Exp.device == "auto" and torch.cuda.is_available():
        return pick_device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}")
    return pick_device(cfg.Exp.device)


def train_sharing(cfg, device, wait=True) -> None:
    """Exp.share_learners: the run's learners one at a time, each placed from the shared folder when a run with the
    same inputs left it there, else trained here and left there with the BatchNorm statistics its training left
    (utils/grid/sharing.py). wait=False: sharing.Busy instead of waiting for a learner another run is training."""
    training, trained = training_set(cfg), {}

    def keep(index, learner):  # as its last epoch left it, before train.py finishes it
        trained[index] = batchnorm.buffers_of(learner)

    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(cfg.run_dir, "train", echo=False)  # its lines go to train.log, among train.py's own
    try:
        for index in range(cfg.Model.num_learners):
            with sharing.take(cfg, index, training, device, cfg.run_dir, log, wait) as shared:
                train.train(cfg, device, echo=False, up_to=index + 1, training=training, on_trained=keep)
                sharing.leave(shared, cfg.run_dir, trained.get(index))
    finally:
        log.close()


def run_cell(cell, wait=True):
    """Train and evaluate one cell unless it is done or locked: (status, seconds, its results or the error line or
    the stop signal's line). wait=False: "deferred" instead of waiting for a shared learner in training."""
    if grids.is_done(cell):
        return "already done", 0.0, None
    lock = runlock.RunLock(cell.run_dir)
    if not lock.acquire():
        return "running elsewhere", 0.0, None
    began = time.monotonic()
    try:
        if grids.is_done(cell):  # finished by another launcher between the check and the lock
            return "already done", 0.0, None
        grids.clear_error(cell)
        device = worker_device(cell.cfg)
        set_tf32(cell.cfg.Exp.tf32)
        if cell.cfg.Exp.share_learners:
            train_sharing(cell.cfg, device, wait)
        else:
            train.train(cell.cfg, device, echo=False)
        results = evaluate.evaluate(cell.cfg, device, echo=False)
        return "done", time.monotonic() - began, results
    except Interrupted as err:  # not a failure: the next launch resumes the cell
        return "interrupted", time.monotonic() - began, str(err)
    except sharing.Busy as err:  # not a failure: taken again later
        return "deferred", time.monotonic() - began, str(err)
    except UserError as err:
        line, details = str(err), ""
    except torch.cuda.OutOfMemoryError:
        line, details = "out of GPU memory; lower Solver.bs or start fewer workers per GPU", traceback.format_exc()
    except Exception as err:  # noqa: BLE001  a bug in one cell must not stop the grid; the traceback is kept
        line, details = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}", \
            traceback.format_exc()
    finally:
        lock.release()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    grids.record_error(cell, line, details)
    return "failed", time.monotonic() - began, line


def progress(cell, total, status, seconds, info, counts=None, queued=None) -> str:
    """One line per cell a worker took: what happened, then (with `counts`) where the whole launch stands of its
    `queued` cells."""
    if status == "done":
        warnings = info.get("diagnostics", {}).get("warnings", [])
        status = f"done in {seconds:.1f} s, dsu AUC {info['dsu']['auc']:.4f}" + "".join(
            f"; warning: {warning}" for warning in warnings)
    elif status == "failed":
        status = f"FAILED after {seconds:.1f} s: {info}"
    elif status == "interrupted":
        status = f"interrupted after {seconds:.1f} s: {info}"
    elif status == "deferred":
        status = f"put back after {seconds:.1f} s: {info}; taken again when no other cell is left"
    line = f"cell {cell.index} of {total} {cell.name}: {status}"
    if counts is None:
        return line
    done, failed, elsewhere = counts
    return (f"{line}   [{done} done, {failed} failed, {elsewhere} running elsewhere, "
            f"{queued - done - failed - elsewhere} left]")


def list_cells(grid) -> None:
    rows = [(str(cell.index), cell.config_path, str(cell.seed), cell.describe_variant(), str(cell.run_dir),
             grids.state(cell)) for cell in grid.cells]
    header = ("cell", "config", "seed", "variant", "run folder", "state")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())
    print(f"{len(rows)} cells; as a Slurm job array: sbatch --array=0-{len(rows) - 1} scripts/slurm_grid.sbatch ...")


def report(grid, chosen=None) -> int:
    """The grid's state after a launch (of the `chosen` cells, by default every cell): the summary when every cell
    is done, the failed cells; the exit code."""
    states = [grids.state(cell) for cell in grid.cells]
    done = [cell for cell, state in zip(grid.cells, states) if state == "done"]
    failed = [cell for cell, state in zip(grid.cells, states) if state == "failed"]
    if len(done) == len(grid.cells):
        results = [grids.read_results(cell) for cell in done]
        md_path, csv_path = write_summary(grid.folder, results=results, wide=True)
        print(markdown_wide(widen(summarize(results))), end="")
        print(f"all {len(done)} cells done; wrote {md_path} and {csv_path}; "
              f"tensorboard --logdir {grid.folder}")
    elif chosen is not None and all(states[index] == "done" for index in chosen):
        print(f"the {len(set(chosen))} cells asked for are done; {len(done)} of the grid's {len(grid.cells)} cells "
              "are done, and its summary is written when every cell is: run the others with --cells, or leave "
              "--cells out to share every cell left")
    elif chosen is not None:
        asked = sorted(set(chosen))
        asked_done = sum(states[index] == "done" for index in asked)
        asked_failed = sum(states[index] == "failed" for index in asked)
        print(f"{asked_done} of the {len(asked)} cells asked for done, {asked_failed} failed, "
              f"{len(asked) - asked_done - asked_failed} running elsewhere or left (rerun the same command to "
              f"finish them); {len(done)} of the grid's {len(grid.cells)} cells done")
    else:
        others = len(grid.cells) - len(done) - len(failed)
        print(f"{len(done)} of {len(grid.cells)} cells done, {len(failed)} failed, {others} running elsewhere or "
              "left; the summary is written when every cell is done (rerun the same command to finish)")
    for cell in failed:
        print(f"failed: cell {cell.index} {cell.name}: {grids.error_of(cell)} (details: {cell.run_dir / grids.ERROR})")
    return 1 if failed else 0


def run_alone(grid, index) -> int:
    """One cell, as a Slurm array task runs it, then the grid's report unless another launcher has the cell."""
    if not 0 <= index < len(grid.cells):
        raise UserError(f"--cell {index}: the grid has cells 0 to {len(grid.cells) - 1}")
    cell = grid.cells[index]
    status, seconds, info = run_cell(cell)
    print(progress(cell, len(grid.cells), status, seconds, info))
    return report(grid) if status != "running elsewhere" else 0


def run_shared(grid, chosen=None) -> int:
    """Take cells (`chosen`: these indices, in this order; default every cell) from the launch's counter until none
    is left or a stop signal came; rank 0 reports."""
    if chosen is not None and (outside := [index for index in chosen if index >= len(grid.cells)]):
        raise UserError(f"--cells: {outside[0]} is not a cell; the grid has cells 0 to {len(grid.cells) - 1}")
    queue = [grid.cells[index] for index in chosen] if chosen is not None else grid.cells
    coordinator = Coordinator()
    if coordinator.rank == 0:
        share = f"{len(queue)} of {len(grid.cells)} cells" if chosen is not None else f"{len(grid.cells)} cells"
        print(f"grid {grid.name}: {share} in {grid.folder}, {coordinator.world_size} worker(s)", flush=True)
    kind = {"done": "done", "already done": "done", "failed": "failed", "running elsewhere": "elsewhere"}

    def take(cell, wait):
        status, seconds, info = run_cell(cell, wait=wait)
        if status in kind:  # an interrupted or deferred cell counts as left
            coordinator.count(kind[status])
        counts = tuple(coordinator.count(name, 0) for name in ("done", "failed", "elsewhere"))
        print(progress(cell, len(grid.cells), status, seconds, info, counts, len(queue)), flush=True)
        return status

    deferred = []  # cells whose shared learner another run was training: this worker's, taken again at the end
    while not stop.requested() and (index := coordinator.next_cell()) < len(queue):
        if take(queue[index], wait=False) == "deferred":
            deferred.append(queue[index])
    for cell in deferred:
        if stop.requested():
            break
        take(cell, wait=True)
    coordinator.finish()
    return report(grid, chosen) if coordinator.rank == 0 else 0


@cli
def main(argv=None) -> int:
    args = parse_args(argv)
    grid = grids.load(args.grid, args.overrides, out_dir=args.out)
    if args.cell is not None and args.cells is not None:
        raise UserError("--cell runs one cell alone and --cells shares several among the workers; give one of them")
    if args.list:
        list_cells(grid)
        return 0
    with stop.deferred():  # SIGTERM or SIGUSR1: the cell in hand stops at the end of an epoch, no other is taken
        code = run_alone(grid, args.cell) if args.cell is not None else run_shared(grid, args.cells)
        stop.check(f"no further cell of grid {grid.name} taken")
    return code


if __name__ == "__main__":
    sys.exit(main())
