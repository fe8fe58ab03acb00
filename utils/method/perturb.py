"""Model.repel_on=pasted: where a junior is pushed away from its seniors, if not on the normal training images.

A repulsion measured on the normal images makes the juniors disagree on normal test images too, which lowers dsu.
This option measures it on a perturbed copy of the training set instead, while the reconstruction loss still pulls
every learner towards the normal images: juniors pushed apart off the normal images, where an anomaly lies, and
left alone on them.

The copy: in each training image, one rectangle of the image's own content pasted over another part of it (as in
CutPaste, Li et al., CVPR 2021), so that no foreign texture or intensity enters, only normal content in the wrong
place. Height and width are drawn between a quarter and an eighth of the side (8-16 pixels at 64); both the
rectangle's source and its target centre are drawn with probability proportional to the pixel's brightness, so the
paste lands on the imaged object and not on an empty background. One copy per run, drawn from Solver.seed alone:
every learner of a run, and the seniors whose features the juniors are compared with, see the same perturbed
images, and the cached (Exp.fast) and eager paths agree.
"""
import torch

from utils import seeding


def rectangles(images, seed):
    """Per image (height, width, source top, source left, target top, target left), drawn as described above;
    a (N, 6) int64 tensor on the CPU."""
    n, _, size, width = images.shape
    generator = seeding.generator(seed, 0, "pasted")
    low, high = max(1, min(size, width) // 8), max(1, min(size, width) // 4)
    extent = torch.randint(low, high + 1, (n, 2), generator=generator)
    brightness = images.detach().float().mean(dim=1).flatten(1).cpu()  # (N, S*S) on the model's [-1, 1] scale
    weights = (brightness - brightness.min(dim=1, keepdim=True).values).clamp_min(0) + 1e-6  # never all zero
    centres = torch.multinomial(weights, 2, replacement=True, generator=generator)  # source, target
    rows, cols = centres // width, centres % width
    tops = (rows - extent[:, :1] // 2).clamp_min(0).minimum(size - extent[:, :1])
    lefts = (cols - extent[:, 1:] // 2).clamp_min(0).minimum(width - extent[:, 1:])
    return torch.cat([extent, tops[:, :1], lefts[:, :1], tops[:, 1:], lefts[:, 1:]], dim=1)


def self_pasted(images, seed):
    """A copy of `images` (N, C, H, W), on their device, in which each image has one rectangle of itself pasted
    elsewhere (rectangles(images, seed)); `images` is not changed."""
    pasted = images.detach().clone()
    for k, (h, w, top, left, to_top, to_left) in enumerate(rectangles(images, seed).tolist()):
        pasted[k, :, to_top:to_top + h, to_left:to_left + w] = images[k, :, top:top + h, left:left + w]
    return pasted
