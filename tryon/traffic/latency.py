"""How long predictions take, per ``(model_name, mode)``, learned from what the polls saw.

A poll never sees a prediction end; it sees it still running at one poll and done at the
next. So each completion gives a bracket ``(lo, hi]``: the age of its last "still running"
answer (0 if the first poll found it done) and the age of the answer that found it done.
When polls are scarce (30 in flight on a 5/s status budget) the brackets are seconds wide and
many start at 0, and the midpoint of a bracket is a biased guess: a running mean of midpoints
drifted between 6.1 and 8.8 s for a true 8 s. :class:`LatencyDistribution` instead keeps the
nonparametric maximum-likelihood estimate for interval-censored data (Turnbull's EM) over the
most recent brackets, on a grid; the poll scheduler asks it how likely a prediction is to
have ended since it was last seen running.

The prior is the provider's published time per mode (from the model registry,
:data:`tryon.models.MODELS`), spread uniformly within ±25 % (the
provider's variation), worth two observations, so the first real ones outweigh it at once; it
is dropped after 20, when it could only bias the estimate.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

from tryon.models import DEFAULT_MODE, DEFAULT_MODEL_NAME, MODELS, latency_prior

Profile = tuple[str, str]  # (model_name, mode)

#: The default model's published seconds per mode (each model's own are in its registry entry).
DEFAULT_PRIORS: dict[str, float] = dict(MODELS[DEFAULT_MODEL_NAME].latency_prior)


@dataclass
class LatencyEstimate:
    mean: float
    dev: float  # mean absolute deviation
    samples: int = 0


class LatencyDistribution:
    """Turnbull's estimate of one profile's latency over its ``keep`` most recent brackets.

    The grid covers four times the current mean in ``bins`` steps; it is laid again around the
    learned mean when that leaves a third to a sixth of it (a provider faster or slower than
    published), so a cell stays about 3 % of the mean.

    >>> d = LatencyDistribution(8.0)
    >>> for lo, hi in [(7.0, 7.4), (7.4, 7.8), (7.8, 8.2)] * 20:
    ...     d.observe(lo, hi)
    >>> 7.5 < d.mean < 7.8, d.cdf(7.0) < 0.05, d.cdf(8.3) > 0.95
    (True, True, True)
    """

    def __init__(self, prior_mean: float, *, spread: float = 0.25, prior_weight: float = 2.0,
                 prior_until: int = 20, keep: int = 200, bins: int = 128, span: float = 4.0,
                 iterations: int = 3) -> None:
        if prior_mean <= 0:
            raise ValueError("prior_mean must be > 0")
        self.bins, self.span, self.iterations = bins, span, iterations
        self.prior_until = prior_until
        self.samples = 0
        # (lo, hi, weight, first cell, end cell): the cells are cached, since every fit needs them.
        self._brackets: deque[tuple[float, float, float, int, int]] = deque(maxlen=keep)
        pieces = 8  # the prior: uniform within ±spread of the published mean, in contiguous brackets
        step = 2 * spread * prior_mean / pieces
        for k in range(pieces):
            lo = prior_mean * (1 - spread) + k * step
            self._brackets.append((lo, lo + step, prior_weight / pieces, 0, 0))  # cells: by _regrid
        self._regrid(prior_mean)

    # -- learning ---------------------------------------------------------------------------
    def observe(self, lo: float, hi: float) -> None:
        """One completion: still running at age ``lo`` (0: never seen running), done at ``hi``."""
        lo, hi = max(0.0, lo), max(lo, hi)
        self._brackets.append((lo, hi, 1.0, *self._cell_range(lo, hi)))
        self.samples += 1
        if self.samples == self.prior_until:  # enough of its own: the prior would only bias it now
            real = [bracket for bracket in self._brackets if bracket[2] == 1.0]
            self._brackets.clear()
            self._brackets.extend(real)
            self._regrid(self.mean)
            return
        self._fit(self.iterations)
        top = self.width * self.bins
        if not top / 6 <= self.mean <= top / 3:  # moved from where the grid was laid: lay it again
            self._regrid(self.mean)

    def _regrid(self, mean: float) -> None:
        self.width = self.span * mean / self.bins
        laid = [(lo, hi, weight, *self._cell_range(lo, hi)) for lo, hi, weight, _, _ in self._brackets]
        self._brackets.clear()
        self._brackets.extend(laid)
        self._mass = [1.0 / self.bins] * self.bins
        self._fit(40)

    def _cell_range(self, lo: float, hi: float) -> tuple[int, int]:
        """The grid cells ``[a, b)`` that stand for ``(lo, hi]``: bounds rounded to the nearest cell
        edge (taking every cell that overlaps would widen each bracket by a cell on average);
        at least one cell, the last one taking the tail."""
        a = min(self.bins - 1, round(lo / self.width))
        b = min(self.bins, max(a + 1, round(hi / self.width)))
        return a, b

    def _fit(self, iterations: int) -> None:
        """EM steps from the current estimate: each bracket spreads its weight over its cells
        in proportion to their mass (prefix sums make one step O(brackets + bins))."""
        total = sum(bracket[2] for bracket in self._brackets)
        mass = self._mass
        for _ in range(iterations):
            cum = _cumulative(mass)
            share = [0.0] * (self.bins + 1)
            for _, _, weight, a, b in self._brackets:
                ratio = weight / max(cum[b] - cum[a], 1e-300)
                share[a] += ratio
                share[b] -= ratio
            running, updated = 0.0, []
            for j in range(self.bins):
                running += share[j]
                # A floor keeps every cell alive, so a bracket never lands on zero mass.
                updated.append(max(mass[j] * running / total, 1e-9))
            norm = sum(updated)
            mass = [m / norm for m in updated]
        self._mass = mass
        self._cum = _cumulative(mass)
        centres = [(j + 0.5) * self.width for j in range(self.bins)]
        self.mean = sum(m * c for m, c in zip(mass, centres, strict=True))
        self.dev = sum(m * abs(c - self.mean) for m, c in zip(mass, centres, strict=True))

    # -- asking -----------------------------------------------------------------------------
    def cdf(self, age: float) -> float:
        """P(latency <= age)."""
        x = age / self.width
        if x <= 0:
            return 0.0
        if x >= self.bins:
            return 1.0
        j = int(x)
        return self._cum[j] + (x - j) * self._mass[j]

    def quantile(self, q: float) -> float:
        """The age by which a share ``q`` of predictions has ended."""
        j = min(self.bins - 1, max(0, bisect.bisect_left(self._cum, q) - 1))
        return (j + min(1.0, max(0.0, (q - self._cum[j]) / self._mass[j]))) * self.width

    def estimate(self) -> LatencyEstimate:
        return LatencyEstimate(self.mean, self.dev, self.samples)


def _cumulative(mass: list[float]) -> list[float]:
    cum = [0.0]
    for m in mass:
        cum.append(cum[-1] + m)
    return cum


class LatencyModel:
    """One :class:`LatencyDistribution` per profile, starting from the provider's published times
    (each model's own, from the registry), or from ``priors`` (seconds per mode, for every model)."""

    def __init__(self, latency_scale: float = 1.0, priors: dict[str, float] | None = None, *,
                 spread: float = 0.25, keep: int = 200) -> None:
        if latency_scale <= 0:
            raise ValueError("latency_scale must be > 0")
        self.latency_scale = latency_scale
        self._registry_priors = priors is None
        self.priors = dict(DEFAULT_PRIORS if priors is None else priors)
        self.spread, self.keep = spread, keep
        self._distributions: dict[Profile, LatencyDistribution] = {}

    def prior(self, profile: Profile) -> float:
        mode = profile[1] if len(profile) > 1 else DEFAULT_MODE
        if self._registry_priors:
            return latency_prior(profile[0] if profile else None, mode) / self.latency_scale
        base = self.priors.get(mode, self.priors.get(DEFAULT_MODE, DEFAULT_PRIORS[DEFAULT_MODE]))
        return base / self.latency_scale

    def distribution(self, profile: Profile) -> LatencyDistribution:
        found = self._distributions.get(profile)
        if found is None:
            found = self._distributions[profile] = LatencyDistribution(
                self.prior(profile), spread=self.spread, keep=self.keep)
        return found

    def estimate(self, profile: Profile) -> LatencyEstimate:
        return self.distribution(profile).estimate()

    def observe(self, profile: Profile, lo: float, hi: float) -> None:
        """A completion seen running at age ``lo`` (0: never) and done at age ``hi``."""
        self.distribution(profile).observe(lo, hi)

    def cdf(self, profile: Profile, age: float) -> float:
        return self.distribution(profile).cdf(age)

    def quantile(self, profile: Profile, q: float) -> float:
        return self.distribution(profile).quantile(q)

    def expected_duration(self, profile: Profile) -> float:
        """A generous guess of how long a prediction of this profile occupies a slot."""
        est = self.estimate(profile)
        return max(est.mean + 4 * est.dev, self.quantile(profile, 0.999))
