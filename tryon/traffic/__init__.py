"""In-process traffic control for ONE FASHN API key: pure asyncio, no Prefect.

What it guards: the key's limits on ``POST /v1/run``, ``GET /v1/status`` and ``GET /v1/credits``
(requests per window) and on predictions in flight, as configured (``FashnSettings``; the
provider's defaults are ``tryon.settings.DEFAULT_*``). One :class:`TrafficController` per key and
event loop holds:

- three :class:`SlidingWindowLimiter` s. They keep an exact log of request times and
  never admit more than N in *any* window of W, plus a small margin (:func:`default_margin`).
  A request counts from when its answer came back, and as just sent until then: the server
  stamped it in between, so however late after its admission it was sent (a stalled event
  loop), N+1 cannot land in one of the server's windows.
  Exact sliding windows because the provider does not document whether its windows
  slide or are fixed: the sliding reading is the strictest, so it is safe under both.
  Waiters are served FIFO; only the head sleeps, exactly until the next admission.
- :class:`InFlightSlots`: a slot is held from submission until the prediction ends and
  handed to the next waiter the moment it does. "Phantom" slots cover predictions that
  may exist behind an ambiguous answer (5xx, dropped connection after sending): the
  server counts them until they would have finished, so we do too.
- one :class:`PollScheduler`: a single loop spends the status budget for every
  prediction in flight (not one polling loop per prediction, which is how the official
  SDK overruns the status limit). It learns the latency distribution of each
  ``(model_name, mode)`` from the brackets its polls put around each completion
  (:class:`LatencyModel`), and its :class:`PollPolicy` gives each status call to the prediction most likely to
  have ended since it was last seen running, so completions are noticed quickly and slots
  reused. Calls are paced at the budget's rate, quicker while the window has room.
- 429 feedback (``on_429``): ``RateLimitExceeded`` pauses that endpoint (Retry-After
  if given, else exponential backoff) and slows it down until it recovers;
  ``ConcurrencyLimitExceeded`` holds a slot for the unknown occupant and holds back
  submissions until one of ours ends; ``OutOfCredits`` stops submissions (they raise
  :class:`tryon.errors.OutOfCredits` at once) while polling goes on, so work in
  flight still finishes and is archived.

Several processes on one key each keep to an equal share (:mod:`tryon.traffic.share`): to the
controller, a share is only a smaller :class:`KeyLimits` (:meth:`TrafficController.set_limits`).

Why in the process and not in Prefect's global concurrency/rate limits: Prefect's
``rate_limit`` is a leaky bucket that admits a burst of L after idle time and then d/s,
so it can admit more than L in one of the provider's sliding windows, and each acquisition is
a server round trip (tens of milliseconds, serialized per process; on SQLite some fail with
"database is locked"). Per call, the decision has to be local,
exact and cheap; Prefect still bounds work at the flow level.

The client takes any :class:`Gate` (``await gate.acquire(endpoint)`` before every
HTTP attempt, whose admission it answers when the attempt ends,
``gate.on_429(endpoint, code, retry_after)`` on every 429);
:class:`TrafficController` is one.
"""

from tryon.client import ENDPOINTS, Gate
from tryon.traffic.clock import Clock, FakeClock, MonotonicClock, sleep_or_wake
from tryon.traffic.controller import KeyLimits, TrafficController
from tryon.traffic.latency import LatencyDistribution, LatencyModel
from tryon.traffic.limiter import Admission, SlidingWindowLimiter, default_margin
from tryon.traffic.poll_policy import PollPolicy
from tryon.traffic.polling import PollScheduler
from tryon.traffic.slots import InFlightSlots, Slot

__all__ = [
    "Admission",
    "ENDPOINTS",
    "Clock",
    "FakeClock",
    "Gate",
    "InFlightSlots",
    "KeyLimits",
    "LatencyDistribution",
    "LatencyModel",
    "MonotonicClock",
    "PollPolicy",
    "PollScheduler",
    "SlidingWindowLimiter",
    "Slot",
    "TrafficController",
    "default_margin",
    "sleep_or_wake",
]
