"""A DICOM's pixels as the benchmark's 8-bit image (its data/preprocess_cxr.py and data/README.md), so that prepared
images and images scored by predict.py are those every paper on the benchmark used.

pydicom's pixel array; MONOCHROME1 inverted as max(img) - img, for every pixel type; an array that is not uint8 min-max
scaled as ((img - min) / (max - min) * 255).astype(uint8), which truncates; Image.fromarray(img).convert("L"), bilinear
resize to 512x512. Integer pixels are computed in int64, which gives the benchmark's values without its wrap-around on
signed data wider than half the type's range; a constant image becomes black (the benchmark divides by zero). Beyond
the benchmark's rule, for files it never met: a multi-frame file gives its first frame and PALETTE COLOR goes through
its colour table first.
"""
import warnings

import numpy as np
import pydicom
from PIL import Image

DICOM_SIZE = 512


def dicom_to_array(path) -> np.ndarray:
    """A DICOM file as a 512x512 uint8 array, by the benchmark's rule (module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every small irregularity
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
        if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
            pixels = pixels[0]  # multi-frame: the first frame only; chest X-rays are single frame
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut
            pixels = apply_color_lut(pixels, dataset)
        if pixels.dtype.kind in "iu" and pixels.dtype != np.uint8:
            pixels = pixels.astype(np.int64)  # the benchmark's integer arithmetic, without its wrap-around
        if photometric == "MONOCHROME1":
            pixels = pixels.max() - pixels
        if pixels.dtype != np.uint8:
            pixels = min_max_uint8(pixels)
        image = Image.fromarray(pixels).convert("L")  # colour (pydicom >= 3 hands YBR over as RGB): PIL's luma
        return np.asarray(image.resize((DICOM_SIZE, DICOM_SIZE), Image.BILINEAR))


def min_max_uint8(pixels) -> np.ndarray:
    """The benchmark's scaling to 8 bit: ((img - min) / (max - min) * 255).astype(uint8), truncating."""
    low, high = pixels.min(), pixels.max()
    if high > low:
        return ((pixels - low) / (high - low) * 255).astype(np.uint8)
    return np.zeros(pixels.shape, np.uint8)  # a constant image has no contrast to stretch
