"""The traffic controller of one API key: the ``Gate`` the client calls before every request."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tryon.client import ENDPOINTS
from tryon.errors import ApiError, ConcurrencyLimitExceeded, NotFound, OutOfCredits
from tryon.models import DEFAULT_MODEL_NAME, Prediction
from tryon.settings import (
    DEFAULT_CREDITS_LIMIT,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_RUN_LIMIT,
    DEFAULT_STATUS_LIMIT,
    Limit,
)
from tryon.traffic.clock import Clock, MonotonicClock
from tryon.traffic.latency import DEFAULT_MODE, LatencyModel, Profile
from tryon.traffic.limiter import Admission, SlidingWindowLimiter
from tryon.traffic.poll_policy import PollFn, PollPolicy
from tryon.traffic.polling import PollScheduler
from tryon.traffic.slots import InFlightSlots, Slot

if TYPE_CHECKING:
    from tryon.settings import FashnSettings

DEFAULT_PROFILE: Profile = (DEFAULT_MODEL_NAME, DEFAULT_MODE)


def _profile(profile: Profile | None, model_name: str | None, mode: str | None) -> Profile:
    """``profile`` if given, else ``(model_name, mode)`` with defaults for what is missing."""
    if profile is not None:
        return (str(profile[0]), str(profile[1]))
    return (model_name or DEFAULT_PROFILE[0], mode or DEFAULT_MODE)


@dataclass(frozen=True)
class KeyLimits:
    """What a key allows: requests per window for each endpoint, and predictions in flight."""

    requests: Mapping[str, Limit]  # by endpoint: run, status, credits
    in_flight: int

    def share(self, members: Mapping[str, int]) -> KeyLimits:
        """``1 / members[endpoint]`` of each limit (0 members: nothing). In flight as the run
        endpoint, but at least one: the provider refuses a prediction over its limit
        (``ConcurrencyLimitExceeded``) without creating or charging it."""
        run = members["run"]
        return KeyLimits({name: Limit(limit.count // members[name] if members[name] else 0, limit.seconds)
                          for name, limit in self.requests.items()},
                         max(1, self.in_flight // run) if run else 0)


class TrafficController:
    """Limiters for run/status/credits, in-flight slots and the poll scheduler of ONE key.

    Satisfies :class:`Gate`. One instance per key and per event loop; share it across
    every flow/task coroutine of the process that uses the key.
    """

    def __init__(self, run_limit: Limit | str = DEFAULT_RUN_LIMIT, status_limit: Limit | str = DEFAULT_STATUS_LIMIT,
                 credits_limit: Limit | str = DEFAULT_CREDITS_LIMIT, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 clock: Clock | None = None, *, margin: float | None = None) -> None:
        self.clock: Clock = clock or MonotonicClock()
        self.limits = KeyLimits(dict(zip(ENDPOINTS, (Limit.parse(lim) for lim in (run_limit, status_limit, credits_limit)),
                                         strict=True)), max_in_flight)  # the whole key, as configured
        self.limiters: dict[str, SlidingWindowLimiter] = {
            # Counted from each answer: the client answers every admission (tryon.client.Gate).
            name: SlidingWindowLimiter(limit, self.clock, margin=margin, name=name, answers=True)
            for name, limit in self.limits.requests.items()
        }
        self.slots = InFlightSlots(max_in_flight, self.clock)
        self.latency = LatencyModel()
        status = self.limiters["status"]
        self.scheduler = PollScheduler(status.acquire, self.clock, PollPolicy(self.latency),
                                       budget=lambda: status.effective_count() / status.window,
                                       fill=lambda: len(status.recent()) / max(1, status.effective_count()))
        self._stopped: str | None = None
        self._stopped_by: type[ApiError] = OutOfCredits
        self._barrier: tuple[int, float] | None = None  # (slot releases seen, until)
        self._barrier_passes = 0  # submissions let through by releases since the barrier went up
        self._unknown_occupants: set[Slot] = set()
        self._concurrency_strikes: tuple[float, int] = (-math.inf, 0)  # (last at, how many in a row)

    @classmethod
    def from_settings(cls, settings: FashnSettings) -> TrafficController:
        """From ``FashnSettings``: the key's limits as configured; latencies are learned, never told."""
        return cls(settings.run_limit, settings.status_limit, settings.credits_limit, settings.max_in_flight)

    @property
    def concurrency_backoff(self) -> float:
        """How long a ConcurrencyLimitExceeded holds back new submissions without a Retry-After:
        a quarter of the default profile's mean latency as learned so far."""
        return self.latency.mean(DEFAULT_PROFILE) / 4

    def set_limits(self, limits: KeyLimits, until: float = math.inf) -> None:
        """Keep within ``limits`` (a share of the configured ones) until ``until`` on this
        controller's clock; after it nothing is admitted until the next call."""
        for name, limit in limits.requests.items():
            self.limiters[name].set_limit(limit, until)
        self.slots.capacity = limits.in_flight

    # -- the Gate protocol ---------------------------------------------------------------
    def _limiter(self, endpoint: str) -> SlidingWindowLimiter:
        try:
            return self.limiters[endpoint]
        except KeyError:
            raise ValueError(f"unknown endpoint {endpoint!r}; known: {', '.join(ENDPOINTS)}") from None

    async def acquire(self, endpoint: str) -> Admission | None:
        """Return when one request to ``endpoint`` may be sent now, with its admission: call
        its ``answered()`` once the answer (or the failure) is in; it counts from then.

        ``run`` raises :class:`OutOfCredits` once submissions are stopped, and waits
        for a slot release after a ``ConcurrencyLimitExceeded``.
        """
        limiter = self._limiter(endpoint)
        if endpoint == "run":
            self._check_submissions()
            await self._wait_concurrency_barrier()
        admission = await limiter.acquire()
        if endpoint == "run":
            try:
                self._check_submissions()
            except BaseException:
                admission.answered()  # not sent
                raise
        return admission

    def on_429(self, endpoint: str, code: str, retry_after: float | None) -> None:
        """Feedback from a 429 on ``endpoint``; never raises."""
        code = code or "TooManyRequests"
        if code == OutOfCredits.code:
            self.stop_submissions(f"429 OutOfCredits on /v1/{endpoint}: add credits, then resume")
        elif code == ConcurrencyLimitExceeded.code:
            self._on_concurrency_limited(retry_after)
        elif endpoint in self.limiters:  # RateLimitExceeded, or a 429 without a known code
            self.limiters[endpoint].penalize(retry_after)

    # -- concurrency ---------------------------------------------------------------------
    def _on_concurrency_limited(self, retry_after: float | None) -> None:
        # The server counts more in flight than we hold: something we do not know about
        # (a phantom, another process, the server ending predictions later than we see
        # them) occupies a slot. Hold one slot for it, and hold back submissions until
        # one of ours ends or the backoff passes.
        # Back off exponentially while the 429s keep coming (forgiven after one quiet mean
        # latency), up to one mean latency, by when some occupant has surely finished.
        now = self.clock.now()
        ceiling = max(self.concurrency_backoff, self.latency.mean(DEFAULT_PROFILE))
        last_at, strikes = self._concurrency_strikes
        strikes = 1 if now - last_at > ceiling else strikes + 1
        self._concurrency_strikes = (now, strikes)
        hold = retry_after if retry_after is not None and retry_after > 0 else \
            min(ceiling, self.concurrency_backoff * 2 ** (strikes - 1))
        self._barrier = (self.slots.releases, self.clock.now() + hold)
        self._barrier_passes = 0
        self._unknown_occupants = {s for s in self._unknown_occupants if not s.released}
        if len(self._unknown_occupants) < self.slots.capacity:
            self._unknown_occupants.add(self.slots.hold_phantom(hold))

    async def _wait_concurrency_barrier(self) -> None:
        # Each release of one of ours lets ONE submission through (a server slot came free:
        # one, not all the waiters, can have it); the backoff's end lets everyone try again.
        while self._barrier is not None:
            releases, until = self._barrier
            now = self.clock.now()
            if now >= until:
                self._barrier = None
                return
            if self.slots.releases - releases > self._barrier_passes:
                self._barrier_passes += 1
                return
            await self.slots.wait_for_release(until - now)
            self._check_submissions()

    # -- slots ---------------------------------------------------------------------------
    async def acquire_slot(self) -> Slot:
        """Wait for an in-flight slot (FIFO); :class:`OutOfCredits` once submissions stop."""
        self._check_submissions()
        return await self.slots.acquire()

    async def occupied_slot(self) -> Slot | None:
        """The slot a resumed prediction occupies, or None once submissions are stopped (a drain,
        out of credits): polling it costs nothing and goes on."""
        if self._stopped is None:
            try:
                return await self.slots.acquire()
            except ApiError:
                if self._stopped is None:
                    raise
        return None

    def release_slot(self, slot: Slot) -> bool:
        return self.slots.release(slot)

    def hold_phantom(self, model_name: str | None = None, mode: str | None = None, *,
                     profile: Profile | None = None, seconds: float | None = None,
                     slot: Slot | None = None) -> Slot:
        """A prediction may exist behind an ambiguous answer: keep a slot busy until it
        would have finished (``seconds``, default a generous guess for the profile).

        Without ``slot`` a new slot is taken at once, even over capacity; with it, that
        slot itself becomes the phantom and is freed when it expires.
        """
        if seconds is None:
            seconds = self.latency.expected_duration(_profile(profile, model_name, mode))
        return self.slots.hold_phantom(seconds, slot)

    # -- polling -------------------------------------------------------------------------
    async def wait(self, prediction_id: str, *, poll: PollFn, profile: Profile | None = None,
                   model_name: str | None = None, mode: str | None = None,
                   submitted_at: float | None = None, timeout: float | None = None,
                   slot: Slot | None = None, pushed: bool = False, hinted: bool = False) -> Prediction:
        """Wait for a terminal answer through the poll scheduler.

        ``pushed``: a webhook will tell its end (:meth:`hint`), polling is only the fallback;
        ``hinted``: one already did.

        The profile is ``profile=(model_name, mode)`` or ``model_name=``/``mode=``.
        ``submitted_at`` is on this controller's clock (``controller.clock.now()``, not
        ``time.time()``); default: now.
        With ``slot``, the slot is freed the moment the terminal answer arrives; on
        ``NotFound`` at once; on any other error (timeout, cancellation) it turns into
        a phantom for one mean latency, since the prediction may still run on the server.
        """
        profile = _profile(profile, model_name, mode)
        on_terminal: Callable[[Prediction], None] | None = None
        if slot is not None:
            on_terminal = lambda _answer: self.slots.release(slot)  # noqa: E731
        try:
            return await self.scheduler.wait(prediction_id, profile=profile, poll=poll,
                                             submitted_at=submitted_at, timeout=timeout,
                                             on_terminal=on_terminal, pushed=pushed, hinted=hinted)
        except NotFound:
            if slot is not None:
                self.slots.release(slot)
            raise
        except BaseException:
            if slot is not None and not slot.released:
                self.slots.hold_phantom(self.latency.mean(profile), slot)
            raise

    def hint(self, prediction_id: str) -> bool:
        """A webhook said the prediction ended: its confirmation goes before every other poll."""
        return self.scheduler.hint(prediction_id)

    # -- out of credits, draining --------------------------------------------------------
    @property
    def submissions_stopped(self) -> str | None:
        """Why submissions are stopped (None while they are allowed)."""
        return self._stopped

    def stop_submissions(self, reason: str, error: type[ApiError] = OutOfCredits) -> None:
        """Refuse every submission from now on, raising ``error``; polling and releases continue.

        Items waiting for a slot or a run token fail with the error that stopped the run
        (``OutOfCredits``, or ``UnauthorizedAccess`` for a revoked key), so the report names it.
        """
        if self._stopped is None:
            self._stopped, self._stopped_by = reason, error
        exc = self._stopped_by(self._stopped)
        self.limiters["run"].fail_waiters(exc)
        self.slots.stop(exc)

    def resume_submissions(self) -> None:
        """Allow submissions again (a drained run is over; the process may run others)."""
        self._stopped = None
        self.slots.resume()

    def _check_submissions(self) -> None:
        if self._stopped is not None:
            raise self._stopped_by(self._stopped)

    async def aclose(self) -> None:
        await self.scheduler.aclose()
        await self.slots.aclose()

    def __repr__(self) -> str:
        limits = ", ".join(f"{n}={lim.limit}" for n, lim in self.limiters.items())
        return f"TrafficController({limits}, max_in_flight={self.slots.capacity})"
