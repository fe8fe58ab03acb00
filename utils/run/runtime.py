"""Device choice and run-folder logging (stdout + log.txt, JSON lines, TensorBoard)."""
import json
import os
import time
from pathlib import Path

import torch

from utils.errors import UserError
from utils.run import config


def pick_device(name: str) -> torch.device:
    """auto -> the current CUDA device when there is one, else the CPU; cuda -> the current CUDA device. A CUDA
    device always comes back with its index (cuda:N), the one made current."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"Exp.device={name} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"Exp.device={name} but no CUDA device is visible; use Exp.device=cpu or auto")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise UserError(f"Exp.device={name} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        torch.cuda.set_device(device)  # kernels, streams and graphs created without a device then land on it
    return device


def set_tf32(enabled: bool) -> None:
    """Make TF32 an explicit choice (PyTorch's own defaults differ between matmul and cuDNN)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def setup(config_path, overrides):
    """The validated config of a command and the device it runs on (TF32 set as the config says)."""
    cfg = config.load(config_path, overrides)
    device = pick_device(cfg.Exp.device)
    set_tf32(cfg.Exp.tf32)
    return cfg, device


def existing_run_dir(path) -> Path:
    """The run folder train.py made; one UserError when it is not there."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run folder {path} not found; train first (python train.py with the same config)")
    return path


def make_run_dir(path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test.{os.getpid()}"  # per process: two commands may start here at once
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to run folder {path} ({err.strerror}); set Exp.out_dir=...") from None
    return path


class RunLog:
    """Lines to stdout and <run>/<name>.log (train.log, eval.log), records to <run>/metrics.jsonl, scalars to
    TensorBoard (<run>/tb)."""

    def __init__(self, run_dir, name="train", echo=True):
        self.run_dir = Path(run_dir)
        self.echo = echo  # False: the run folder only (a grid's workers would interleave their lines)
        self.text = open(self.run_dir / f"{name}.log", "a")
        self.records = open(self.run_dir / "metrics.jsonl", "a")
        self._writer = None

    @property
    def tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(self.run_dir / "tb"))
        return self._writer

    def info(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        if self.echo:
            print(line, flush=True)
        self.text.write(line + "\n")
        self.text.flush()

    def scalars(self, tag: str, values: dict, step: int) -> None:
        for name, value in values.items():
            self.tensorboard.add_scalar(f"{tag}/{name}", value, step)
        self.records.write(json.dumps({"tag": tag, "step": step, **values}) + "\n")
        self.records.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.text.close()
        self.records.close()
