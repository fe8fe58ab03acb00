"""Overlays of an anomaly map on its image, as arrays and PNG files: a colour map applied to the array, no figure
per image, so that predict.py writes thousands in seconds (matplotlib's colour maps only, not pyplot)."""
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from utils.errors import UserError

OVERLAY_CMAP = "jet"  # as the grid's map columns (utils/report/figures.py)
OVERLAY_MIN_SIDE = 256  # a 64-pixel overlay is enlarged 4x: a thumbnail would be too small to read


def overlay_array(image, anomaly_map, vmax, cmap=OVERLAY_CMAP) -> np.ndarray:
    """uint8 (H, W, 3): a grey image in [-1, 1] with its anomaly map painted over it on the colour scale 0 to vmax.

    A pixel's colour is the colour map's colour at map / vmax, blended over the grey with that same share as its
    opacity: 0 keeps the grey, vmax and above is the colour map's top colour. One vmax for many images puts them
    on one scale. No figure is drawn, so thousands of images take seconds.
    """
    image, anomaly_map = np.squeeze(np.asarray(image)), np.squeeze(np.asarray(anomaly_map, dtype=np.float64))
    if image.ndim != 2 or image.shape != anomaly_map.shape:
        raise UserError(f"overlay needs one 2-D image and a map of the same size, got {image.shape} and "
                        f"{anomaly_map.shape}")
    share = np.clip(np.nan_to_num(anomaly_map / max(vmax, 1e-30)), 0, 1)[..., None]
    grey = np.clip((np.asarray(image, dtype=np.float64)[..., None] + 1) / 2, 0, 1)
    colour = matplotlib.colormaps[cmap](share[..., 0])[..., :3]
    return np.round(255 * ((1 - share) * grey + share * colour)).astype(np.uint8)


def write_overlay(pixels, path, note="", min_side=OVERLAY_MIN_SIDE):
    """Write overlay_array's pixels as a PNG, enlarged by a whole factor (each pixel a sharp block) to at least
    min_side; `note` (e.g. the colour scale) goes into the file's text metadata."""
    height, width = pixels.shape[:2]
    factor = max(1, -(-min_side // min(height, width)))
    info = PngInfo()
    if note:
        info.add_text("Description", note)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).resize((width * factor, height * factor), Image.Resampling.NEAREST).save(
        path, pnginfo=info, compress_level=1)
