"""Local defects drawn on a grayscale image, with the mask of the pixels they change: the anomalies of the
Fashion-MNIST local dev sets (datasets/prepare/fashion_mnist.py), made to look like a lesion in an organ.

Kinds (sizes in pixels, for 28 x 28 images):
  blob     a soft bright or dark ellipse with a Gaussian profile (standard deviations 1.5-3 and 0.5-1 times that,
           peak 70-140 grey levels), added to or subtracted from the garment only
  patch    a rectangle (sides 6-11) of a donor image pasted in; the donor's rectangle lies at least half on its garment
  missing  a rectangle (sides 5-10) or an ellipse (half-axes 2.5-5 and 0.5-1 times that) set to the background (0)
Each defect is centred on the garment: on a pixel of its support (pixels brighter than SUPPORT_LEVEL) at least INSET
pixels from its border where the garment is that wide. A blob is bright with probability 1 - (grey level under
it) / 255, else dark, so that it has room to show. The mask is the set of pixels that changed by more than THRESHOLD
grey levels, and every other pixel keeps its original value, so a defective image differs from its original exactly
on its mask (a blob's faint tails and pasted pixels equal to the original are left out). A draw that changes fewer
than MIN_PIXELS pixels, or changes them by less than MIN_MEAN_CHANGE grey levels on average, is drawn again (up to
MAX_TRIES times, then the other kinds are tried: a missing region cannot show on a black garment), so every defect
is visible.
"""
import numpy as np

from utils.errors import UserError

KINDS = ("blob", "patch", "missing")
BACKGROUND = 0        # Fashion-MNIST's background is black
SUPPORT_LEVEL = 16    # grey level above which a pixel belongs to the garment
THRESHOLD = 10        # grey levels a pixel must change by to be in the mask
MIN_PIXELS = 10       # smallest mask accepted
MIN_MEAN_CHANGE = 30  # smallest mean change over the mask accepted, in grey levels
INSET = 2             # a defect's centre is at least this many pixels inside the garment where it can be
MAX_TRIES = 100


def support(image) -> np.ndarray:
    """bool: the pixels of the garment."""
    return np.asarray(image) > SUPPORT_LEVEL


def _inner(on, depth=INSET):
    """`on` without the pixels less than `depth` steps (4-neighbour) from its border; fewer steps where that would
    leave nothing (a thin garment)."""
    for _ in range(depth):
        padded = np.pad(on, 1)
        inner = on & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        if not inner.any():
            break
        on = inner
    return on


def _centre(rng, image):
    """A point (row, column) on the garment, anywhere inside its pixel."""
    on = support(image)
    rows, cols = np.nonzero(_inner(on) if on.any() else np.ones_like(on))  # a blank image: anywhere
    pick = rng.integers(len(rows))
    return rows[pick] + rng.uniform(-0.5, 0.5), cols[pick] + rng.uniform(-0.5, 0.5)


def _radius2(shape, centre, axes, angle):
    """Squared elliptical radius of every pixel: 1 on the ellipse with these half-axes (rows, columns) and angle."""
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    dy, dx = rows - centre[0], cols - centre[1]
    u = (np.cos(angle) * dx + np.sin(angle) * dy) / axes[1]
    v = (-np.sin(angle) * dx + np.cos(angle) * dy) / axes[0]
    return u * u + v * v


def _ellipse_axes(rng, low, high):
    major = rng.uniform(low, high)
    return major, major * rng.uniform(0.5, 1.0)


def _rectangle(rng, image, low, high):
    """(top, left, height, width) of a rectangle centred on the garment, moved inside the image where needed."""
    height, width = (int(side) for side in rng.integers(low, high + 1, size=2))
    row, col = _centre(rng, image)
    top = int(np.clip(round(row - height / 2), 0, image.shape[0] - height))
    left = int(np.clip(round(col - width / 2), 0, image.shape[1] - width))
    return top, left, height, width


def _blob(rng, image, donors):
    profile = np.exp(-_radius2(image.shape, _centre(rng, image), _ellipse_axes(rng, 1.5, 3.0),
                               rng.uniform(0, np.pi)) / 2)
    # Bright more often where the garment is dark and dark where it is bright, so that the blob has room to show.
    level = (profile * image).sum() / profile.sum()
    sign = 1 if rng.uniform() < 1 - level / 255 else -1
    return image + sign * rng.uniform(70, 140) * profile * support(image)


def _patch(rng, image, donors):
    top, left, height, width = _rectangle(rng, image, 6, 11)
    for _ in range(MAX_TRIES):  # a donor rectangle mostly on the donor's garment, not its background
        donor = donors[rng.integers(len(donors))]
        d_top, d_left = rng.integers(0, donor.shape[0] - height + 1), rng.integers(0, donor.shape[1] - width + 1)
        piece = donor[d_top:d_top + height, d_left:d_left + width]
        if support(piece).mean() >= 0.5:
            break
    drawn = image.astype(np.float64)
    drawn[top:top + height, left:left + width] = piece
    return drawn


def _missing(rng, image, donors):
    if rng.integers(2):
        top, left, height, width = _rectangle(rng, image, 5, 10)
        region = np.zeros(image.shape, bool)
        region[top:top + height, left:left + width] = True
    else:
        region = _radius2(image.shape, _centre(rng, image), _ellipse_axes(rng, 2.5, 5.0), rng.uniform(0, np.pi)) <= 1
    return np.where(region, BACKGROUND, image)


DRAW = {"blob": _blob, "patch": _patch, "missing": _missing}


def draw_defect(rng, image, kind, donors) -> tuple:
    """(defective uint8 image, bool mask of the changed pixels, kind drawn) of a uint8 image; `donors` (N x H x W
    uint8) are the images a patch is taken from. When no visible defect of `kind` can be drawn (a missing region on
    a black garment), the other kinds are tried in the order of KINDS."""
    image = np.asarray(image, np.uint8)
    for candidate in [kind, *(other for other in KINDS if other != kind)]:
        for _ in range(MAX_TRIES):
            drawn = np.clip(np.round(DRAW[candidate](rng, image, donors)), 0, 255).astype(np.uint8)
            change = np.abs(drawn.astype(np.int16) - image)
            mask = change > THRESHOLD
            if mask.sum() >= MIN_PIXELS and change[mask].mean() >= MIN_MEAN_CHANGE:
                return np.where(mask, drawn, image), mask, candidate
    raise UserError(f"no visible defect of any kind found in {MAX_TRIES} draws each on an image with "
                    f"{support(image).sum()} garment pixels; try another --seed")
