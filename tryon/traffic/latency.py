"""How long predictions take, per ``(model_name, mode)``, learned from what the polls saw.

A poll never sees a prediction end; it sees it still running at one poll and done at the
next. So each completion gives a bracket ``(lo, hi]``: the age of its last "still running"
answer (0 if the first poll found it done) and the age of the answer that found it done.
When polls are scarce (30 in flight on a 5/s status budget) the brackets are seconds wide and
many start at 0, and the midpoint of a bracket is a biased guess. :class:`LatencyDistribution`
instead keeps the nonparametric maximum-likelihood estimate for interval-censored data
(Turnbull's EM) on a grid; the poll scheduler asks it how likely a prediction is to have ended
since it was last seen running.

Nothing here assumes a latency in seconds. The prior, the provider's published time per mode
(from the model registry, :data:`tryon.models.MODELS`) spread within ±25 %, is only a first
guess: it weighs one observation and is dropped at the first bracket it made unlikely (a
provider, a model or an emulator several times faster or slower than published). Brackets
weigh less the older they are (half weight after ``half_life`` completions), so a latency that
drifts (the provider's queue grows or drains) is followed within a few dozen completions. A
latency that falls leaves brackets ``(0, hi]`` that the EM would put where the old mass was;
:meth:`LatencyDistribution.restart` (called by the scheduler when its first polls keep finding
predictions already done) drops the old brackets and starts the EM from an even spread.
"""

from __future__ import annotations

import bisect
from collections import deque

from tryon.models import DEFAULT_MODE, latency_prior

Profile = tuple[str, str]  # (model_name, mode)


class LatencyDistribution:
    """Turnbull's estimate of one profile's latency, recent brackets weighing most.

    The grid covers four times the current mean in ``bins`` steps; it is laid again around the
    learned mean when that leaves a third to a sixth of it, so a cell stays about 3 % of the mean.

    >>> d = LatencyDistribution(8.0)
    >>> for lo, hi in [(7.0, 7.4), (7.4, 7.8), (7.8, 8.2)] * 20:
    ...     d.observe(lo, hi)
    >>> 7.5 < d.mean < 7.8, d.cdf(6.9) < 0.05, d.cdf(8.4) > 0.95
    (True, True, True)
    """

    def __init__(self, prior_mean: float, *, spread: float = 0.25, prior_weight: float = 1.0,
                 half_life: float = 15.0, bins: int = 128, span: float = 4.0, iterations: int = 8) -> None:
        if prior_mean <= 0:
            raise ValueError("prior_mean must be > 0")
        self.bins, self.span, self.iterations = bins, span, iterations
        self.decay = 0.5 ** (1.0 / half_life)
        self.samples = 0
        # (lo, hi, weight, sequence number, first cell, end cell): a bracket weighs
        # weight * decay ** (samples - sequence); past ~7 half-lives it no longer counts.
        self._brackets: deque[tuple[float, float, float, int, int, int]] = deque(maxlen=int(7 * half_life))
        self.prior_range: tuple[float, float] | None = (prior_mean * (1 - spread), prior_mean * (1 + spread))
        pieces = 8  # the prior: uniform within ±spread of the published mean, in contiguous brackets
        step = 2 * spread * prior_mean / pieces
        for k in range(pieces):
            lo = prior_mean * (1 - spread) + k * step
            self._brackets.append((lo, lo + step, prior_weight / pieces, 0, 0, 0))  # cells: by _regrid
        self._regrid(prior_mean)

    # -- learning ---------------------------------------------------------------------------
    def observe(self, lo: float, hi: float) -> None:
        """One completion: still running at age ``lo`` (0: never seen running), done at ``hi``."""
        lo, hi = max(0.0, lo), max(lo, hi)
        self.samples += 1
        if self.prior_range is not None and self._contradicts_prior(lo, hi):
            self._drop_prior()  # the guess was wrong: the data alone from now on
        self._brackets.append((lo, hi, 1.0, self.samples, *self._cell_range(lo, hi)))
        self._fit(self.iterations)
        for _ in range(4):  # moved from where the grid was laid: lay it again (maybe twice: a far move)
            top = self.width * self.bins
            if top / 6 <= self.mean <= top / 3:
                break
            self._regrid(self.mean)

    def _contradicts_prior(self, lo: float, hi: float) -> bool:
        """Whether the prior gave ``(lo, hi]`` less than a tenth of the chance an even spread over the
        prior's range gives a bracket that long: a bracket (0, 6.2] on a prior of 6-10 s (the
        predictions took 3-5 s) contradicts it, one of (7.0, 7.2] or (0, 8] does not."""
        assert self.prior_range is not None
        p_lo, p_hi = self.prior_range
        chance = max(0.0, min(hi, p_hi) - max(lo, p_lo)) / (p_hi - p_lo)
        return chance < 0.1 * min(1.0, (hi - lo) / (p_hi - p_lo))

    def restart(self, keep: int) -> None:
        """Keep only the ``keep`` latest brackets and fit them from an even spread: the estimate
        put new brackets where old ones were, and the old ones no longer hold."""
        self._drop_prior()
        latest = list(self._brackets)[-keep:]
        self._brackets.clear()
        self._brackets.extend(latest)
        if self._brackets:
            self._regrid(max(hi for _, hi, *_ in self._brackets) / 2)

    def _drop_prior(self) -> None:
        if self.prior_range is None:
            return
        self.prior_range = None
        real = [bracket for bracket in self._brackets if bracket[3] > 0]
        self._brackets.clear()
        self._brackets.extend(real)

    def _regrid(self, mean: float) -> None:
        self.width = self.span * mean / self.bins
        laid = [(lo, hi, weight, seq, *self._cell_range(lo, hi)) for lo, hi, weight, seq, _, _ in self._brackets]
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
        weights = [(weight * self.decay ** (self.samples - seq), a, b) for _, _, weight, seq, a, b in self._brackets]
        total = sum(w for w, _, _ in weights)
        mass = self._mass
        for _ in range(iterations if total > 0 else 0):
            cum = _cumulative(mass)
            share = [0.0] * (self.bins + 1)
            for weight, a, b in weights:
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
        # What the scheduler is told is smoothed over ±15 % / sqrt(completions) of the mean: a few
        # brackets leave gaps between them that no latency is believed to fall in, and one
        # ending in a gap would go unpolled until the next bracket's age.
        seen = sum(w for (w, _, _), bracket in zip(weights, self._brackets, strict=True) if bracket[3] > 0)
        smooth = _smoothed(mass, round(0.15 * self.bins / self.span / max(1.0, seen) ** 0.5) if seen else 0)
        self._smooth = smooth
        self._cum = _cumulative(smooth)
        centres = [(j + 0.5) * self.width for j in range(self.bins)]
        self.mean = sum(m * c for m, c in zip(smooth, centres, strict=True))
        self.dev = sum(m * abs(c - self.mean) for m, c in zip(smooth, centres, strict=True))

    # -- asking -----------------------------------------------------------------------------
    def cdf(self, age: float) -> float:
        """P(latency <= age)."""
        x = age / self.width
        if x <= 0:
            return 0.0
        if x >= self.bins:
            return 1.0
        j = int(x)
        return self._cum[j] + (x - j) * self._smooth[j]

    def quantile(self, q: float) -> float:
        """The age by which a share ``q`` of predictions has ended."""
        j = min(self.bins - 1, max(0, bisect.bisect_left(self._cum, q) - 1))
        return (j + min(1.0, max(0.0, (q - self._cum[j]) / self._smooth[j]))) * self.width


def _smoothed(mass: list[float], half: int) -> list[float]:
    """``mass`` spread by a triangular kernel ``half`` cells either side (renormalised)."""
    if half < 1:
        return mass
    kernel = [half + 1 - abs(o) for o in range(-half, half + 1)]
    n = len(mass)
    out = [0.0] * n
    for j, m in enumerate(mass):
        for o, k in enumerate(kernel, -half):
            if 0 <= j + o < n:
                out[j + o] += m * k
    norm = sum(out)
    return [max(v / norm, 1e-12) for v in out]


def _cumulative(mass: list[float]) -> list[float]:
    cum = [0.0]
    for m in mass:
        cum.append(cum[-1] + m)
    return cum


class LatencyModel:
    """One :class:`LatencyDistribution` per profile, starting from the provider's published times
    (each model's own, from the registry)."""

    def __init__(self, *, spread: float = 0.25, half_life: float = 15.0) -> None:
        self.spread, self.half_life = spread, half_life
        self._distributions: dict[Profile, LatencyDistribution] = {}

    def prior(self, profile: Profile) -> float:
        """The published seconds of ``profile``: a first guess, overridden by what is seen."""
        mode = profile[1] if len(profile) > 1 else DEFAULT_MODE
        return latency_prior(profile[0] if profile else None, mode)

    def distribution(self, profile: Profile) -> LatencyDistribution:
        found = self._distributions.get(profile)
        if found is None:
            found = self._distributions[profile] = LatencyDistribution(
                self.prior(profile), spread=self.spread, half_life=self.half_life)
        return found

    def mean(self, profile: Profile) -> float:
        """The current mean estimate: the unit every interval of the poll scheduler is measured in."""
        return self.distribution(profile).mean

    def learned(self, profile: Profile) -> bool:
        """Whether any completion of ``profile`` was seen (else the estimate is the prior)."""
        return self.distribution(profile).samples > 0

    def observe(self, profile: Profile, lo: float, hi: float) -> None:
        """A completion seen running at age ``lo`` (0: never) and done at age ``hi``."""
        self.distribution(profile).observe(lo, hi)

    def cdf(self, profile: Profile, age: float) -> float:
        return self.distribution(profile).cdf(age)

    def quantile(self, profile: Profile, q: float) -> float:
        return self.distribution(profile).quantile(q)

    def expected_duration(self, profile: Profile) -> float:
        """A generous guess of how long a prediction of this profile occupies a slot."""
        found = self.distribution(profile)
        return max(found.mean + 4 * found.dev, found.quantile(0.999))
