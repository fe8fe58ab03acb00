"""The training optimizer: Adam (betas 0.5, 0.999, as published) in its fused implementation, and restoring its state
from a checkpoint on whichever device a run resumes."""
import torch


def adam(learner, solver, device, capture=False):
    """Adam (betas 0.5, 0.999) in its fused implementation, on the CPU and on CUDA.

    Fused is one kernel for every parameter; on CUDA the alternative PyTorch picks when `fused=False` is passed
    explicitly is a loop of several kernels per parameter, most of a captured step's launches. A captured step
    also needs `capturable` (Adam's step counter on the GPU).
    """
    return torch.optim.Adam(learner.parameters(), lr=solver.lr, betas=(0.5, 0.999),
                            weight_decay=solver.weight_decay, **adam_options(device, capture))


def adam_options(device, capture=False) -> dict:
    return {"fused": torch.device(device).type in ("cpu", "cuda"), "capturable": capture}


def load_optimizer_state(optimizer, state) -> None:
    """Load a checkpoint's optimizer state but keep this optimizer's `capturable` and `fused` (a run may resume on
    another device). Adam keeps its step counter on the parameters' device when capturable, on the CPU otherwise.

    Each moment tensor is then laid out like its parameter: `load_state_dict` keeps the saved strides, so a state
    written on a GPU (standard layout) would meet channels-last weights on the CPU, and the fused kernel, which
    walks both in memory order, would pair every 4-D weight with the wrong moments.
    """
    kept = ("capturable", "fused")
    groups = [{**saved, **{key: current.get(key) for key in kept}}
              for saved, current in zip(state["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({**state, "param_groups": groups})
    for param, param_state in optimizer.state.items():
        for key, value in param_state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                param_state[key] = torch.empty_like(param).copy_(value)  # empty_like keeps the param's strides
