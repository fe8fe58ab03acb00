"""Seed replicates share nothing: every learner of every seed starts from its own weights and draws its own
shuffles."""
import itertools

import torch

import train
from tests.conftest import write_config
from utils import seeding
from utils.run import config


def conv_weights(learner):
    return [module.weight.detach().clone() for module in learner.modules() if isinstance(module, torch.nn.Conv2d)]


def test_initial_weights_of_every_learner_of_seeds_1_to_5_are_pairwise_different(tiny_root, tmp_path):
    path = write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "runs", Model={"num_learners": 3})
    weights = {}
    for seed, index in itertools.product(range(1, 6), range(3)):
        cfg = config.load(path, [f"Solver.seed={seed}"])
        weights[seed, index] = conv_weights(train.new_learner(cfg, index, torch.device("cpu"))[0])
    assert len(weights) == 15 and len(weights[1, 0]) >= 4
    for a, b in itertools.combinations(weights, 2):
        shared = sum(torch.equal(x, y) for x, y in zip(weights[a], weights[b]))
        assert shared == 0, f"seed {a[0]} learner {a[1]} and seed {b[0]} learner {b[1]} share {shared} convolutions"


def test_the_same_seed_and_learner_give_the_same_weights(tiny_root, tmp_path):
    cfg = config.load(write_config(tmp_path / "c.yaml", tiny_root, tmp_path / "runs"), ["Solver.seed=4"])
    first = conv_weights(train.new_learner(cfg, 1, torch.device("cpu"))[0])
    torch.manual_seed(123)  # whatever ran before
    second = conv_weights(train.new_learner(cfg, 1, torch.device("cpu"))[0])
    assert all(torch.equal(x, y) for x, y in zip(first, second))


def test_streams_differ_across_seeds_learners_purposes_and_epochs():
    keys = [(seed, learner, purpose, *extra) for seed in (-1, 0, 1, 2, 3) for learner in range(4)
            for purpose, extra in [("init", ()), ("precise_bn", ()), ("probe", ()),
                                   *[("shuffle", (epoch,)) for epoch in range(5)]]]
    seeds = [seeding.stream_seed(*key) for key in keys]
    assert len(set(seeds)) == len(keys)
    assert all(0 <= value < 2**63 for value in seeds)


def test_epoch_shuffles_of_neighbouring_seeds_do_not_repeat():
    orders = {(seed, learner, epoch): train.epoch_order(100, seed, learner, epoch).tolist()
              for seed in (1, 2) for learner in (0, 1) for epoch in (0, 1)}
    assert len({tuple(order) for order in orders.values()}) == len(orders)
    assert orders[1, 0, 0] == train.epoch_order(100, 1, 0, 0).tolist()  # a function of its arguments alone
