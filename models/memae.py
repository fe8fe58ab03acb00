"""MemAE: the autoencoder whose decoder sees z only through a memory of prototypes (Gong et al., ICCV 2019)."""
import math

import torch
from torch import nn
from torch.nn import functional as F

from models.ae import AE


class MemAE(AE):
    """forward(x) -> {"x_hat", "att", "features"}; loss: MSE + entropy_loss_weight * attention entropy.

    The RAR feature tap at layer 4 is z before the memory.
    """

    def __init__(self, img_size=64, mp=1, ls=16, layer=4, mem_dim=25, shrink_thres=0.0025,
                 entropy_loss_weight=0.0002):
        super().__init__(img_size, mp, ls, layer)
        bound = 1.0 / math.sqrt(ls)
        self.memory = nn.Parameter(torch.empty(mem_dim, ls).uniform_(-bound, bound))
        self.shrink_thres = shrink_thres
        self.entropy_loss_weight = entropy_loss_weight

    def latent(self, z):
        att = F.softmax(z @ self.memory.t(), dim=1)
        if self.shrink_thres > 0:
            # Hard shrinkage written with ReLU so that it stays differentiable, then L1 renormalisation.
            shifted = att - self.shrink_thres
            att = F.relu(shifted) * att / (shifted.abs() + 1e-12)
            att = F.normalize(att, p=1, dim=1)
        return att @ self.memory, {"att": att}

    def loss(self, out, x):
        rec = (out["x_hat"] - x).pow(2).mean()
        att = out["att"]
        entropy = (-att * torch.log(att + 1e-12)).sum(dim=1).mean()
        return rec + self.entropy_loss_weight * entropy, {"rec": rec, "entropy": entropy}
