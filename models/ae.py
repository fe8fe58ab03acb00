"""The convolutional autoencoder of D2UE and its two variants' shared skeleton.

Encoder: 4 x (down -> BN -> ReLU), channels 1 -> w -> 2w -> 4w -> 4w (S -> S/16), w = 16 * mp.
Bottleneck: flatten -> Linear 2048 -> BN -> ReLU -> Linear ls (= z) -> [memory, MemAE only] -> Linear 2048 -> BN ->
ReLU -> Linear -> reshape. Decoder: 4 x (up -> BN -> ReLU), channels 4w -> 4w -> 2w -> w -> out; the last block is
a bare transposed convolution. Convolutions carry no bias.
"""
import torch
from torch import nn

# Names of the feature taps, indexed by Model.layer (RAR repels the tapped feature).
TAPS = ("en1", "en2", "en3", "en4", "z", "bottleneck", "de1", "de2", "de3")


def down(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def up(c_in, c_out):
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def mlp(c_in, c_out, hidden=2048):
    return nn.Sequential(nn.Linear(c_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, c_out))


class AE(nn.Module):
    """Plain autoencoder. forward(x) -> {"x_hat", "features"}; loss: mean squared error."""

    out_channels = 1

    def __init__(self, img_size=64, mp=1, ls=16, layer=4):
        super().__init__()
        w = 16 * mp
        self.layer = layer
        self.grid = (4 * w, img_size // 16, img_size // 16)
        flat = 4 * w * (img_size // 16) ** 2
        self.encoder = nn.ModuleList([down(1, w), down(w, 2 * w), down(2 * w, 4 * w), down(4 * w, 4 * w)])
        self.to_latent = mlp(flat, ls)
        self.from_latent = mlp(ls, flat)
        self.decoder = nn.ModuleList([up(4 * w, 4 * w), up(4 * w, 2 * w), up(2 * w, w),
                                      nn.ConvTranspose2d(w, self.out_channels, 4, 2, 1, bias=False)])

    def latent(self, z):
        """What the decoder sees of z (MemAE reads it through its memory)."""
        return z, {}

    def forward(self, x):
        taps = []
        h = x
        for block in self.encoder:
            h = block(h)
            taps.append(h)
        z = self.to_latent(h.flatten(1))
        taps.append(z)
        z, extra = self.latent(z)
        h = self.from_latent(z).view(-1, *self.grid)
        taps.append(h)
        for block in self.decoder[:-1]:
            h = block(h)
            taps.append(h)
        out = self.head(self.decoder[-1](h))
        return {**out, **extra, "features": taps[self.layer]}

    def head(self, y):
        return {"x_hat": y}

    def loss(self, out, x):
        """Training loss and its named terms (for logging)."""
        rec = (out["x_hat"] - x).pow(2).mean()
        return rec, {"rec": rec}

    def score_error(self, out, x):
        """Per-pixel error whose image mean DSU differentiates with respect to the input."""
        return (out["x_hat"] - x).abs()

    def pixel_variance(self, out):
        """Predicted per-pixel variance that normalises the scores (1 for a plain AE)."""
        return torch.ones_like(out["x_hat"])
