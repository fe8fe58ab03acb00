"""The published D2UE code's learners in this project's backbones: the key map of their tensors, and how the
published code made them whatever its config said.

Its modules are named differently (en_block1.model.0.weight for our encoder.0.0.weight) but hold the same layers in
the same order, tensor for tensor. Reading its files: utils/run/published_files.py.
"""
import math

SOURCE = "the published D2UE code (github.com/Rubiscol/D2UE)"

# Published name prefix -> ours, one skeleton for AE, AE-U and MemAE (models/ae.py). Its blocks keep their layers in
# `.model`; its last decoder block is a bare transposed convolution, as ours. MemAE's memory goes by name: a
# permutation of its slots changes no output, so no test can tell their order.
RENAMES = (
    ("en_block1.model.", "encoder.0."),
    ("en_block2.model.", "encoder.1."),
    ("en_block3.model.", "encoder.2."),
    ("en_block4.model.", "encoder.3."),
    ("bottle_neck.linear_enc.", "to_latent."),
    ("bottle_neck.memory_module.memory.weight", "memory"),
    ("bottle_neck.linear_dec.", "from_latent."),
    ("de_block1.model.", "decoder.0."),
    ("de_block2.model.", "decoder.1."),
    ("de_block3.model.", "decoder.2."),
    ("de_block4.model.0.", "decoder.3."),
)

# How every published learner was made, whatever a config says: this project's options the published code lacks, at
# its one behaviour, and settings it never passed on from its YAML (get_model builds MemAE with its default
# threshold; the AE trainer adds the repulsion unweighted).
PUBLISHED_WAY = {"Solver.precise_bn": False, "Data.holdout": 0.0}
NOT_PASSED_ON = {"MemAE": {"Model.shrink_thres": 0.0025}, "AE": {"Solver.Lambda": 1.0}}


def built_with(network) -> dict:
    """{"Section.key": value} the published code made every `network` learner with."""
    return {**PUBLISHED_WAY, **NOT_PASSED_ON.get(network, {})}


def our_name(name: str):
    """The name of a published tensor in our backbones, or None for a name no published backbone has."""
    for theirs, ours in RENAMES:
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    return None


def published_name(ours: str) -> str:
    for theirs, prefix in RENAMES:
        if ours.startswith(prefix):
            return theirs + ours[len(prefix):]
    return ours


def settings_of(state) -> dict:
    """What a published state dict's shapes say of its backbone ({"Model.network": "AE", ...}), where they say it."""
    def shape(key):
        return tuple(state[key].shape) if key in state else ()

    told = {}
    memory, head = shape("bottle_neck.memory_module.memory.weight"), shape("de_block4.model.0.weight")
    if memory:
        told.update({"Model.network": "MemAE", "Model.mem_dim": memory[0]})
    elif len(head) == 4 and head[1] in (1, 2):
        told["Model.network"] = ("AE", "AE-U")[head[1] - 1]
    width, latent, flat = shape("en_block1.model.0.weight"), shape("bottle_neck.linear_enc.3.weight"), \
        shape("bottle_neck.linear_enc.0.weight")
    if width and width[0] % 16 == 0:
        told["Model.mp"] = width[0] // 16
    if len(latent) == 2:
        told["Model.ls"] = latent[0]
    if len(flat) == 2 and width:
        side = math.isqrt(flat[1] // (4 * width[0]))  # the bottleneck flattens 4w channels of (S/16)^2 pixels
        if 4 * width[0] * side * side == flat[1]:
            told["Data.img_size"] = 16 * side
    return told
