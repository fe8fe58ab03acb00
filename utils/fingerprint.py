"""The identity of tensors: what a shared learner's key and a reference's record of its learners hash."""
import hashlib

import torch


def fingerprint(tensors) -> str:
    """sha256 of the tensors' shapes, dtypes and bytes, in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()  # the bytes in logical order, whatever the memory format
        digest.update(f"{tuple(tensor.shape)} {tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
