"""One key used by several processes at once: each takes an equal share of it.

Counting the processes is someone else's job (:mod:`flows.coordination` counts them with a
lease-backed Prefect global concurrency limit); this is the policy, pure asyncio and
testable on a fake clock:

- **shrink at once** when more processes use the key: our sliding windows already hold
  our recent admissions, so a lower count just admits less from now on, and our
  predictions in flight above the new slot share end within one latency;
- **join carefully**: a process that arrives while others use the key cannot know what
  they admitted in the current window or how many predictions they have in flight, so it
  admits nothing for one settle period (the longest window) while they shrink;
- **grow late** when processes leave: their admissions stay in the provider's window (and
  a killed process's predictions stay in flight) for up to one settle period, so the
  larger share is taken only after the lower count has held that long.
"""

from __future__ import annotations

from tryon.settings import Limit


class KeyShare:
    """Scales a :class:`~tryon.traffic.TrafficController` to ``1 / members`` of the key."""

    def __init__(self, controller, settle: float | None = None) -> None:
        self.controller = controller
        self.base_limits: dict[str, Limit] = {name: lim.limit for name, lim in controller.limiters.items()}
        self.base_capacity: int = controller.slots.capacity
        self.settle = max(lim.window for lim in controller.limiters.values()) if settle is None else settle
        self.members = 1
        self.peak_members = 1
        self._fewer_since: float | None = None

    def _apply(self, members: int) -> None:
        self.members = members
        self.peak_members = max(self.peak_members, members)
        for name, limiter in self.controller.limiters.items():
            base = self.base_limits[name]
            limiter.set_limit(Limit(max(1, base.count // members), base.seconds))
        self.controller.slots.capacity = max(1, self.base_capacity // members)

    def join(self, members: int) -> None:
        """We just became one of ``members`` users of the key."""
        members = max(1, members)
        if members < self.members:  # fewer than when this process last used the key: grow late
            self.observe(members)
            return
        self._apply(members)
        if members > 1:
            for limiter in self.controller.limiters.values():
                limiter.pause(self.settle)

    def observe(self, members: int) -> None:
        """The latest count of users of the key (us included)."""
        members = max(1, members)
        now = self.controller.clock.now()
        if members >= self.members:
            self._fewer_since = None
            if members > self.members:
                self._apply(members)
            return
        if self._fewer_since is None:
            self._fewer_since = now
        elif now - self._fewer_since >= self.settle:
            self._fewer_since = None
            self._apply(members)

    def __repr__(self) -> str:
        return f"KeyShare(1/{self.members} of the key, settle={self.settle:g}s)"
