"""Device choice: every documented Exp.device value resolves, on a machine with CUDA (faked here: only the driver
calls are replaced, torch's own argument checks run) and without."""
import pytest
import torch
from torch.cuda._utils import _get_device_index

from utils.errors import UserError
from utils.run.runtime import pick_device


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two visible CUDA devices, device 1 current; records what set_device was given."""
    state = {"current": 1, "set": []}

    def set_device(device):
        index = _get_device_index(device)  # what torch.cuda.set_device does before it calls the driver
        state["set"].append(index)
        state["current"] = index

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    return state


@pytest.mark.parametrize("name, index", [("cuda", 1), ("auto", 1), ("cuda:0", 0), ("cuda:1", 1)])
def test_every_cuda_name_resolves_to_an_indexed_current_device(fake_cuda, name, index):
    device = pick_device(name)
    assert device == torch.device("cuda", index)
    assert fake_cuda["set"] == [index] and fake_cuda["current"] == index


def test_cuda_index_beyond_the_visible_devices_is_one_line(fake_cuda):
    with pytest.raises(UserError, match=r"Exp.device=cuda:2 but only 2 CUDA device\(s\) are visible"):
        pick_device("cuda:2")


def test_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu") and pick_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="no CUDA device is visible"):
        pick_device("cuda")


def test_a_name_that_is_no_device_is_one_line():
    with pytest.raises(UserError, match="gpu0 is not a device"):
        pick_device("gpu0")
