"""The 95% t interval of a mean over independent units, as the studies report paired differences."""
import numpy as np
from scipy import stats


def mean_interval(values, level=0.95) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of the values; low and high are None with fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if values.size < 2:
        return mean, None, None
    half = stats.t.ppf((1 + level) / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return mean, float(mean - half), float(mean + half)
