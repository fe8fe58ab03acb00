"""The error maps the error-map study compares, each a per-pixel map (N x 1 x S x S) of an image x against the
ensemble's reconstruction x_hat (the mean of the learners' outputs), with v the learners' mean pixel variance (1 for
AE and MemAE):

l2       (x - x_hat)^2 / v                     today's rec map
l1       |x - x_hat| / sqrt(v)
ssim     1 - SSIM(x, x_hat)                    Gaussian window (11 x 11, sigma 1.5; Wang et al. 2004), data range 2
l2_ssim  l2 / mean(l2) + ssim / mean(ssim)     each divided by its mean over the reference's normal images (the
                                               fit half), so that neither term sets the scale of the other
"""
import torch
from torch.nn import functional as F

MAPS = ("l2", "l1", "ssim", "l2_ssim")
WINDOW, SIGMA = 11, 1.5
DATA_RANGE = 2.0  # the backbones' inputs lie in [-1, 1]
K1, K2 = 0.01, 0.03  # SSIM's stabilising constants, as in Wang et al.


def gaussian_window(size=WINDOW, sigma=SIGMA) -> torch.Tensor:
    """The normalised 1-D Gaussian window (size,); the 2-D window is its outer product, applied as two passes."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    line = torch.exp(-offsets.pow(2) / (2 * sigma ** 2))
    return line / line.sum()


def local_mean(values, line) -> torch.Tensor:
    """The window-weighted mean around every pixel (rows, then columns); the border is replicated."""
    pad = line.numel() // 2
    padded = F.pad(values, (pad, pad, pad, pad), mode="replicate")
    return F.conv2d(F.conv2d(padded, line.view(1, 1, 1, -1)), line.view(1, 1, -1, 1))


def ssim_map(x, y, data_range=DATA_RANGE) -> torch.Tensor:
    """SSIM(x, y) per pixel from Gaussian-weighted local means, variances and covariance (population form)."""
    window = gaussian_window().to(x.device, torch.float64)
    x, y = x.double(), y.double()
    mean_x, mean_y = local_mean(x, window), local_mean(y, window)
    var_x = local_mean(x * x, window) - mean_x ** 2
    var_y = local_mean(y * y, window) - mean_y ** 2
    cov = local_mean(x * y, window) - mean_x * mean_y
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    return ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / ((mean_x ** 2 + mean_y ** 2 + c1) * (var_x + var_y + c2))


def base_maps(x, x_hat, variance) -> dict:
    """The maps that need no reference: l2, l1 and ssim (float32)."""
    return {"l2": (x - x_hat).pow(2) / variance, "l1": (x - x_hat).abs() / variance.sqrt(),
            "ssim": (1 - ssim_map(x, x_hat)).float()}


def combined(maps: dict, means: dict) -> dict:
    """maps plus l2_ssim, with `means` the mean of l2 and of ssim over the reference's normal images."""
    return {**maps, "l2_ssim": maps["l2"] / means["l2"] + maps["ssim"] / means["ssim"]}
