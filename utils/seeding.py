"""Every random stream of a run, derived from (seed, learner, purpose): no two learners of any two seeds, and no two
purposes, share a stream (seed + learner would give seed 2's learner 0 the weights of seed 1's learner 1)."""
import numpy as np
import torch

PURPOSES = ("init", "shuffle", "precise_bn", "probe", "pasted", "holdout", "reference")  # append only: the index enters every stream


def stream_seed(seed: int, learner: int, purpose: str, *more: int) -> int:
    """A 63-bit seed from numpy's SeedSequence hash of the arguments (negative seeds are allowed)."""
    words = [PURPOSES.index(purpose), learner, *more, seed % 2**64]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(seed: int, learner: int, purpose: str, *more: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, learner, purpose, *more))


def seed_learner(seed: int, learner: int) -> None:
    """Seed the global generators (CPU and CUDA) before a learner is built: its initial weights."""
    torch.manual_seed(stream_seed(seed, learner, "init"))
