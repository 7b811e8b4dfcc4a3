"""A small `statistics` for woof handlers (the standard one needs
fractions, decimal and random): mean, fmean, median, median_low,
median_high, mode, multimode, pvariance, variance, pstdev, stdev.

Integers are summed exactly, so the mean or variance of ints is an int
when it is whole and a float otherwise, as in CPython; floats are summed
with math.fsum.
"""

import math
from collections import Counter

__all__ = [
    "StatisticsError", "mean", "fmean", "median", "median_low", "median_high",
    "mode", "multimode", "pvariance", "variance", "pstdev", "stdev",
]


class StatisticsError(ValueError):
    pass


def _ints(data):
    for x in data:
        if not isinstance(x, int):
            return False
    return True


def _number(x):
    if isinstance(x, (int, float)):
        return x
    raise TypeError("can't convert type '%s' to numerator/denominator" % type(x).__name__)


def _ratio(numerator, denominator):
    # An int when it is whole, else the nearest float.
    if numerator % denominator == 0:
        return numerator // denominator
    return numerator / denominator


def mean(data):
    """The arithmetic mean of data."""
    data = [_number(x) for x in data]
    n = len(data)
    if n < 1:
        raise StatisticsError("mean requires at least one data point")
    if _ints(data):
        return _ratio(sum(data), n)
    return math.fsum(data) / n


def fmean(data, weights=None):
    """The arithmetic mean of data as a float (weighted if weights are given)."""
    data = [float(_number(x)) for x in data]
    if weights is None:
        if not data:
            raise StatisticsError("fmean requires at least one data point")
        return math.fsum(data) / len(data)
    weights = [float(_number(w)) for w in weights]
    if len(weights) != len(data):
        raise StatisticsError("data and weights must be the same length")
    total = math.fsum(weights)
    if not total:
        raise StatisticsError("sum of weights must be non-zero")
    return math.fsum(x * w for x, w in zip(data, weights)) / total


def median(data):
    """The middle value of data, or the mean of the two middle values."""
    data = sorted(data)
    n = len(data)
    if n == 0:
        raise StatisticsError("no median for empty data")
    if n % 2 == 1:
        return data[n // 2]
    i = n // 2
    return (data[i - 1] + data[i]) / 2


def median_low(data):
    """The low median of data: always one of its values."""
    data = sorted(data)
    n = len(data)
    if n == 0:
        raise StatisticsError("no median for empty data")
    if n % 2 == 1:
        return data[n // 2]
    return data[n // 2 - 1]


def median_high(data):
    """The high median of data: always one of its values."""
    data = sorted(data)
    n = len(data)
    if n == 0:
        raise StatisticsError("no median for empty data")
    return data[n // 2]


def mode(data):
    """The most common value in data (the first one met, if several are)."""
    pairs = Counter(iter(data)).most_common(1)
    if not pairs:
        raise StatisticsError("no mode for empty data")
    return pairs[0][0]


def multimode(data):
    """The most common values in data, in the order first met."""
    counts = Counter(iter(data))
    if not counts:
        return []
    top = max(counts.values())
    return [value for value, count in counts.items() if count == top]


def _sum_of_squares(data, centre):
    # Returns (sum of squared deviations, n) of data about centre, or about
    # its mean if centre is None: exactly for ints, else with fsum.
    data = [_number(x) for x in data]
    n = len(data)
    if centre is None and _ints(data):
        total = sum(data)
        # n * sum((x - total/n)**2), kept in integers, over n.
        return (n * sum(x * x for x in data) - total * total, n), n
    if centre is None:
        centre = math.fsum(data) / n if n else 0.0
    deviations = [x - centre for x in data]
    # The second term corrects for rounding in centre (it is zero if exact).
    ss = math.fsum(d * d for d in deviations) - math.fsum(deviations) ** 2 / n if n else 0.0
    return (ss, 1), n


def _variance(ss, over):
    numerator, scale = ss
    if isinstance(numerator, int) and isinstance(scale, int):
        return _ratio(numerator, scale * over)
    return max(0.0, numerator / (scale * over))


def pvariance(data, mu=None):
    """The population variance of data (about mu, if given)."""
    ss, n = _sum_of_squares(data, mu)
    if n < 1:
        raise StatisticsError("pvariance requires at least one data point")
    return _variance(ss, n)


def variance(data, xbar=None):
    """The sample variance of data (about xbar, if given)."""
    ss, n = _sum_of_squares(data, xbar)
    if n < 2:
        raise StatisticsError("variance requires at least two data points")
    return _variance(ss, n - 1)


def pstdev(data, mu=None):
    """The population standard deviation of data."""
    return math.sqrt(pvariance(data, mu))


def stdev(data, xbar=None):
    """The sample standard deviation of data."""
    return math.sqrt(variance(data, xbar))
