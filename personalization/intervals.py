"""The statistics of an online experiment, in plain Python (no numpy at run time):
interval estimates for a rate, the lift of one arm over another, and the
sample-ratio-mismatch check that says whether the split itself went wrong."""

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided 95%: the normal quantile used by every interval here.
Z_95 = 1.959963984540054
# Resamples of the lift's bootstrap: enough for a stable 95% interval's ends.
BOOTSTRAP_RESAMPLES = 2000
# Above this many visitors in an arm, lifts take the delta method's interval:
# the bootstrap's cost grows with visitors x resamples (a second per 100k).
BOOTSTRAP_MAX_VISITORS = 5000
# The SRM check's alarm level: the field's usual threshold (Kohavi et al.),
# strict because a real mismatch invalidates every other figure.
SRM_ALARM_P = 0.001


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95% interval (None where the data cannot give one)."""

    value: float | None
    low: float | None
    high: float | None

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high}


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> Estimate:
    """A proportion with its Wilson score interval, which stays inside [0, 1]
    and behaves at 0 and 1 successes, where the normal approximation does not."""
    if trials <= 0:
        return Estimate(None, None, None)
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    spread = (z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))) / (
        1 + z2 / trials
    )
    return Estimate(p, max(0.0, centre - spread), min(1.0, centre + spread))


def mean_interval(values: Sequence[float], z: float = Z_95) -> Estimate:
    """A mean (e.g. requests per visitor) with its normal-approximation interval."""
    n = len(values)
    if n == 0:
        return Estimate(None, None, None)
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, None, None)
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(variance / n)
    return Estimate(mean, max(0.0, mean - half), mean + half)


def ratio_of_sums(units: Sequence[tuple[float, float]]) -> float | None:
    """Σ numerators / Σ denominators over units, e.g. clicks / items shown."""
    denominator = sum(d for _, d in units)
    return sum(n for n, _ in units) / denominator if denominator else None


def lift_interval(
    treatment: Sequence[tuple[float, float]],
    control: Sequence[tuple[float, float]],
    seed: int = 0,
) -> Estimate:
    """The lift of a ratio metric with its 95% interval: the bootstrap over
    visitors while the arms are small (where its shape matters), the delta
    method beyond BOOTSTRAP_MAX_VISITORS (where the two agree, and resampling
    would cost seconds on every report)."""
    if max(len(treatment), len(control)) <= BOOTSTRAP_MAX_VISITORS:
        return bootstrap_lift(treatment, control, seed=seed)
    return delta_lift(treatment, control)


def delta_lift(
    treatment: Sequence[tuple[float, float]], control: Sequence[tuple[float, float]]
) -> Estimate:
    """The lift of a ratio metric (Σ numerator / Σ denominator per arm, one pair
    per visitor) with a delta-method interval on the log of the ratio of the
    arms' ratios (Deng et al., "Applying the Delta Method in Metric Analytics")."""
    arms = [ratio_and_log_variance(units) for units in (treatment, control)]
    if any(arm is None for arm in arms):
        return Estimate(None, None, None)
    (r_t, var_t), (r_c, var_c) = arms
    point = r_t / r_c - 1
    if r_t == 0:
        return Estimate(point, None, None)  # no log of 0: no interval
    half = Z_95 * math.sqrt(var_t + var_c)
    centre = math.log(r_t / r_c)
    return Estimate(point, math.exp(centre - half) - 1, math.exp(centre + half) - 1)


def ratio_and_log_variance(
    units: Sequence[tuple[float, float]],
) -> tuple[float, float] | None:
    """A ratio metric Σx / Σy over units and the variance of its log, by the
    delta method: Var(R) = (s²x − 2R·sxy + R²·s²y) / (n·ȳ²); Var(log R) =
    Var(R) / R². None when there is no denominator."""
    n = len(units)
    if n < 2:
        return None
    mean_x = sum(x for x, _ in units) / n
    mean_y = sum(y for _, y in units) / n
    if mean_y == 0:
        return None
    ratio = mean_x / mean_y
    var_x = sum((x - mean_x) ** 2 for x, _ in units) / (n - 1)
    var_y = sum((y - mean_y) ** 2 for _, y in units) / (n - 1)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in units) / (n - 1)
    var_ratio = (var_x - 2 * ratio * cov + ratio**2 * var_y) / (n * mean_y**2)
    return ratio, (var_ratio / ratio**2 if ratio else math.inf)


def bootstrap_lift(
    treatment: Sequence[tuple[float, float]],
    control: Sequence[tuple[float, float]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Estimate:
    """The relative lift of treatment over control (0.2 = 20% better) of a ratio
    metric, each arm given as one (numerator, denominator) per visitor.

    Visitors, not impressions, are resampled: one visitor's clicks are not
    independent of each other, and treating them as such makes intervals too
    narrow. Seeded, so a report reads the same twice.
    """
    point_treatment = ratio_of_sums(treatment)
    point_control = ratio_of_sums(control)
    if point_treatment is None or not point_control:
        return Estimate(None, None, None)  # no baseline to be relative to
    point = point_treatment / point_control - 1
    rng = random.Random(seed)
    lifts = []
    for _ in range(resamples):
        t = ratio_of_sums(rng.choices(treatment, k=len(treatment)))
        c = ratio_of_sums(rng.choices(control, k=len(control)))
        if t is not None and c:
            lifts.append(t / c - 1)
    if len(lifts) < resamples // 2:
        return Estimate(point, None, None)
    lifts.sort()
    return Estimate(point, percentile(lifts, 0.025), percentile(lifts, 0.975))


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values, interpolated linearly (numpy's default)."""
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


@dataclass(frozen=True)
class SampleRatio:
    """Did the arms get the visitors the split promised? A chi-square test of
    the observed counts against the configured shares (1 degree of freedom for
    two arms)."""

    chi_square: float
    p_value: float
    mismatch: bool


def sample_ratio_check(
    observed: dict[str, int], shares: dict[str, float]
) -> SampleRatio:
    """Compare visitors per arm with the expected shares of their total."""
    total = sum(observed.values())
    if total == 0:
        return SampleRatio(0.0, 1.0, False)
    chi_square = 0.0
    for arm, share in shares.items():
        expected = total * share
        if expected > 0:
            chi_square += (observed.get(arm, 0) - expected) ** 2 / expected
        elif observed.get(arm, 0):
            return SampleRatio(math.inf, 0.0, True)  # visitors where none can be
    degrees = max(1, sum(1 for share in shares.values() if share > 0) - 1)
    p_value = chi_square_survival(chi_square, degrees)
    return SampleRatio(chi_square, p_value, p_value < SRM_ALARM_P)


def chi_square_survival(statistic: float, degrees: int) -> float:
    """P(X >= statistic) for chi-square with 1 or 2 degrees of freedom (the
    experiment has two or three arms); closed forms, no scipy needed."""
    if degrees == 1:
        return math.erfc(math.sqrt(statistic / 2))
    if degrees == 2:
        return math.exp(-statistic / 2)
    raise ValueError("only 1 or 2 degrees of freedom are supported")
