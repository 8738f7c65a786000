"""Several processes on one API key: counted and introduced through Prefect.

Every process that runs items on a key holds one slot of the global concurrency limit
``tryon-key-<fingerprint>`` for as long as it does, under a lease that it renews in the
background and that lapses if the process dies: the number of slots held is the number of
processes using the key. Each member also keeps a record in a Prefect variable of its own
(``tryon-key-<fingerprint>-<member>``, tagged ``tryon-key-<fingerprint>``): what the others
need to know of its recent admissions when one joins or leaves. Each record is also sent as a
Prefect event (``tryon.key.record`` on the resource ``tryon-key-<fingerprint>``), which the
server streams to the other members before it stores anything: on a loaded SQLite server a
variable write waits seconds, and a newcomer's slots wait with it. The variables stay the
durable copy (a member that missed an event reads them). What the count and the records mean
is :class:`tryon.traffic.share.KeyShare`'s policy; this module only carries them.

Per-call decisions stay in the process (exact, no round trip). Prefect is asked once at start,
then every ``interval`` seconds, at once when another member's record arrives, and more often
while a newcomer waits to be acknowledged or a member left (a count and a variable read or
write each). Flow runs of one process share one controller and so count once (reference
counted). A busy server's 503s (SQLite's ``database is locked``) are retried; a join or a leave
goes on for up to ``JOIN_PATIENCE``, and a join still refused then fails the run before anything
is spent (:class:`KeyCoordinationError`): running alone beside another run overruns the key. A
Prefect that cannot count at all (an error that is not a busy server's) lets the process run
alone on its full share, said in a warning: the controller still backs off on any 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.events import Event
from prefect.events.clients import (
    EventsClient,
    PrefectEventsClient,
    PrefectEventSubscriber,
    get_events_client,
    get_events_subscriber,
)
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, PREFECT_CLOUD_API_URL, temporary_settings

from tryon.traffic import TrafficController
from tryon.traffic.share import KeyShare, Record

MAX_MEMBERS = 64  # the limit is a counter, not a gate: never make a process wait for it
LEASE_SECONDS = 60.0  # the server's shortest
RENEW_EVERY = LEASE_SECONDS / 4
FORGOTTEN = 3600.0  # a record silent this long is from a process long gone: pruned
RECORD_EVENT = "tryon.key.record"  # each record is also sent as this event, on the key's resource
LISTEN_TIMEOUT = 2.0  # seconds to wait for the record stream before joining without it
log = logging.getLogger("tryon.coordination")
T = TypeVar("T")


@dataclass
class _Membership:
    users: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


_memberships: dict[int, _Membership] = {}
_leaving: dict[int, asyncio.Task] = {}  # by controller: memberships still writing their last record
_background_leaves: ContextVar[list[asyncio.Task] | None] = ContextVar("tryon_background_leaves", default=None)


def limit_name(fingerprint: str) -> str:
    return f"tryon-key-{fingerprint}"


async def count_members(name: str, client: PrefectClient | None = None) -> int:
    if client is None:
        async with get_client() as client:
            return await count_members(name, client)
    return (await _quickly(lambda: client.read_global_concurrency_limit_by_name(name))).active_slots


QUICK_RETRIES = (0.05, 0.1, 0.2)  # seconds between our own attempts (a 503 itself can take 2 s)
RETRIED = (429, 502, 503)  # a busy server (503: "database is locked" on SQLite): try again
JOIN_PATIENCE = 60.0  # seconds a join or a leave goes on retrying a busy server, at most 1 s apart
_patience: ContextVar[float] = ContextVar("tryon_key_patience", default=0.0)


class KeyCoordinationError(RuntimeError):
    """Prefect stayed too busy to count this process among the key's users: it does not start,
    so as not to use a share another run counts on (nothing was spent)."""


def _busy(exc: BaseException) -> bool:
    return isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code in RETRIED


async def _quickly(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, retried at short intervals where the client's own retries are off (see
    :func:`_hold`): Prefect's client waits 2 s, then 4 s, after an HTTP 503 (``database is locked``
    on a loaded SQLite server; measured: record writes of 2 s and 6 s), while a newcomer waits on
    the others' records, or the one left on a leaver's, with slots idle. Within a join or a leave
    (``_patience`` set) it goes on for that long: a join given up on 4 quick 503s ran alone on the
    whole key beside another run (benchmark: 45 x 429)."""
    deadline = time.monotonic() + _patience.get()
    attempt = 0
    while True:
        try:
            return await call()
        except PrefectHTTPStatusError as exc:
            if not _busy(exc):
                raise
            if attempt < len(QUICK_RETRIES):
                delay = QUICK_RETRIES[attempt]
            else:
                delay = min(1.0, QUICK_RETRIES[-1] * 2 ** (attempt - len(QUICK_RETRIES) + 1))
                if time.monotonic() + delay > deadline:
                    raise  # the caller tries again later, or gives up
        attempt += 1
        await asyncio.sleep(delay)


@contextlib.contextmanager
def _patient() -> Iterator[None]:
    token = _patience.set(JOIN_PATIENCE)
    try:
        yield
    finally:
        _patience.reset(token)


class Records:
    """The members' records of one key: one Prefect variable each, found by their tag (durable),
    and, when ``events`` (an open Prefect events client) is given, each also sent as an event
    (streamed to the others within milliseconds: a variable write can wait seconds on a loaded
    SQLite server). What a member knows is the newest record of each member from either."""

    def __init__(self, client: PrefectClient, name: str, events: EventsClient | None = None) -> None:
        self.client, self.tag, self.events = client, name, events
        self.listening = False  # the others' records stream in as they are sent
        self._created = False
        self._newest: dict[str, Record] = {}

    def _variable(self, member: str) -> str:
        return f"{self.tag}-{member}"

    def heard(self, record: Record) -> list[Record]:
        """Take ``record`` in (a member's record changes only by growing newer); what we know now."""
        member = str(record.get("member"))
        known = self._newest.get(member)
        if known is None or float(record.get("at", 0)) > float(known.get("at", 0)):
            self._newest[member] = record
        return list(self._newest.values())

    async def announce(self, record: Record) -> bool:
        """Send ``record`` as an event; whether it went."""
        if self.events is None:
            return False
        try:
            await self.events.emit(Event(event=RECORD_EVENT, resource={"prefect.resource.id": self.tag},
                                         payload=record))
            return True
        except Exception as exc:  # the variable still carries it, only later
            log.debug("could not send this process's record as an event (%s: %s)", type(exc).__name__, exc)
            return False

    async def write(self, record: Record) -> None:
        """Store ``record`` in our variable."""
        name = self._variable(record["member"])
        if not self._created:
            try:
                await _quickly(lambda: self.client.create_variable(
                    VariableCreate(name=name, value=record, tags=[self.tag])))
                self._created = True
                return
            except ObjectAlreadyExists:
                self._created = True
        await _quickly(lambda: self.client.update_variable(VariableUpdate(name=name, value=record)))

    async def read(self) -> list[Record]:
        response = await _quickly(lambda: self.client.request(
            "POST", "/variables/filter", json={"variables": {"tags": {"all_": [self.tag]}}, "limit": 200}))
        for variable in response.json():
            if isinstance(variable.get("value"), dict):
                self.heard(variable["value"])
        return list(self._newest.values())

    async def prune(self, records: list[Record], settle: float) -> None:
        """Delete records nobody needs: members that left over a settle period ago, or silent for an hour."""
        now = time.time()
        for record in records:
            age = now - float(record.get("at", 0))
            if age > (settle if record.get("left") else FORGOTTEN):
                with contextlib.suppress(ObjectNotFound):
                    await self.client.delete_variable_by_name(self._variable(str(record.get("member"))))


async def _hold(controller: TrafficController, name: str, stop: asyncio.Event, joined: asyncio.Future) -> None:
    """Hold our slot, keep the share in step with the count and the records until ``stop``, then
    leave a record."""
    share: KeyShare = controller.share
    share.lease = LEASE_SECONDS  # how long a dead member may still be counted
    nudge = asyncio.Event()  # a record came by event: follow it now, not at the next interval
    prefect_retries = contextvars.copy_context()  # for the lease renewal, which is not urgent
    try:
        steps = _Steps()
        # Our own quick retries (see _quickly) on everything but the renewal: on a loaded server
        # Prefect's client retries a 503 after 2, 4, 8 s, and a newcomer's join took 23 s that way
        # (the slot acquisition of Prefect's concurrency(), whose retries are its own).
        with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
            async with get_client() as client, _events_client(str(client.api_url)) as events:
                records = Records(client, name, events)
                async with _listening(share, records, str(client.api_url), nudge):
                    steps.done("stream")
                    with _patient():
                        await _create_limit(client, name)
                    steps.done("limit")
                    share.start()  # before we are counted: every record taken after this one counts us
                    # Every member counted has a record (KeyShare relies on it): no record, no membership.
                    await _publish(records, share.record(), share)
                    steps.done("record")
                    async with _slot(client, name, prefect_retries):
                        steps.done("slot")
                        with _patient():
                            members = await count_members(name, client)
                        steps.done("count")
                        steps.report()
                        share.join(members)
                        joined.set_result(members)
                        await _follow(share, records, name, stop, nudge)
                        left = share.record(left=True)
                        # Before the slot goes: sent as an event, or else stored. Once it is sent,
                        # the slot goes at once, so that the one left alone, which takes the whole
                        # key on this record, does not count us for seconds (it would shrink meanwhile).
                        sent = await records.announce(left)
                        if not sent:
                            await _publish(records, left, share, announce=False)
                    if sent:
                        await _publish(records, left, share, announce=False)
                with contextlib.suppress(Exception):  # off the join path: a newcomer's wait costs slots
                    await records.prune(await records.read(), share.settle)
    except Exception as exc:
        if not joined.done():
            joined.set_exception(exc)
        else:
            log.warning("left the key's membership early (%s: %s)", type(exc).__name__, exc)


async def _create_limit(client: PrefectClient, name: str) -> None:
    try:
        await _quickly(lambda: client.upsert_global_concurrency_limit_by_name(name, MAX_MEMBERS))
    except ObjectAlreadyExists:  # another process created it between our read and our create
        await _quickly(lambda: client.upsert_global_concurrency_limit_by_name(name, MAX_MEMBERS))


@contextlib.asynccontextmanager
async def _slot(client: PrefectClient, name: str, renewal_context: contextvars.Context) -> AsyncIterator[None]:
    """One slot of the limit ``name`` while the block runs, under a lease renewed in the
    background (in ``renewal_context``) and given back at the end; a dead process's lapses."""
    with _patient():
        response = await _quickly(lambda: client.increment_concurrency_slots_with_lease(
            [name], 1, "concurrency", LEASE_SECONDS))
    lease_id = response.json()["lease_id"]
    renewing = asyncio.create_task(_renew(client, lease_id), context=renewal_context)
    try:
        yield
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)
        with _patient():  # else the others count us until the lease lapses, at a smaller share
            await _quickly(lambda: client.release_concurrency_slots_with_lease(lease_id))


async def _renew(client: PrefectClient, lease_id: str) -> None:
    while True:
        await asyncio.sleep(RENEW_EVERY)
        try:
            await client.renew_concurrency_lease(lease_id, LEASE_SECONDS)
        except Exception as exc:  # the next try may succeed; the records keep us counted meanwhile
            log.warning("could not renew this process's membership of the key (%s: %s)", type(exc).__name__, exc)


class _Steps:
    """How long joining took, step by step (said when slow: the key's slots wait meanwhile)."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.times: list[str] = []

    def done(self, step: str) -> None:
        now = time.monotonic()
        self.times.append(f"{step} {now - self.last:.2f}s")
        self.last = now

    def report(self) -> None:
        took = time.monotonic() - self.start
        (log.info if took > 1.0 else log.debug)("counted among the key's users after %.2fs (%s)", took,
                                                ", ".join(self.times))


@contextlib.asynccontextmanager
async def _events_client(api_url: str) -> AsyncIterator[EventsClient | None]:
    """An open events client for the records, or None (then they go by variable only)."""
    try:
        events = get_events_client() if _is_cloud(api_url) else PrefectEventsClient(api_url=api_url)
        await events.__aenter__()
    except Exception as exc:
        log.info("records go by variable only: no event stream (%s: %s)", type(exc).__name__, exc)
        yield None
        return
    try:
        yield events
    finally:
        with contextlib.suppress(Exception):  # closing it is not worth failing a finished membership
            await events.__aexit__(None, None, None)


def _is_cloud(api_url: str) -> bool:
    return api_url.startswith(PREFECT_CLOUD_API_URL.value())


@contextlib.asynccontextmanager
async def _listening(share: KeyShare, records: Records, api_url: str, nudge: asyncio.Event) -> AsyncIterator[None]:
    """Follow the others' records as they are sent while the block runs. Enters once the stream
    is open (or after ``LISTEN_TIMEOUT``): acknowledgements of us come after our first record,
    so none is missed."""
    if records.events is None:
        yield
        return
    connected = asyncio.Event()
    task = asyncio.create_task(_listen(share, records, api_url, nudge, connected))
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(connected.wait(), LISTEN_TIMEOUT)
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _listen(share: KeyShare, records: Records, api_url: str, nudge: asyncio.Event,
                  connected: asyncio.Event) -> None:
    which = EventFilter(event=EventNameFilter(name=[RECORD_EVENT]), resource=EventResourceFilter(id=[records.tag]))
    try:
        subscriber = get_events_subscriber(filter=which) if _is_cloud(api_url) else \
            PrefectEventSubscriber(api_url=api_url, filter=which)
        async with subscriber:
            records.listening = True
            connected.set()
            async for event in subscriber:
                record = event.payload
                if isinstance(record, dict) and record.get("member") not in (None, share.member):
                    _take(share, records.heard(dict(record)))
                    nudge.set()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the variables still carry every record, only later
        log.info("following the key's records by variable only (%s: %s)", type(exc).__name__, exc)
    finally:
        records.listening = False
        connected.set()


def _take(share: KeyShare, known: list[Record], members: int | None = None) -> None:
    """Follow the members' records, and say when that started us or gave us the whole key
    (``members``: our count before this step, when a count was applied just before)."""
    waiting, members = share.waiting, share.members if members is None else members
    share.on_records(known)
    if waiting and not share.waiting:
        log.info("acknowledged by the %d other process(es) on this key after %.2fs: starting on "
                 "1/%d", members - 1, time.time() - (share.joined_at or 0), share.members)
    elif members > 1 == share.members:
        log.info("the other process(es) left this key: taking all of it")


async def _follow(share: KeyShare, records: Records, name: str, stop: asyncio.Event, nudge: asyncio.Event) -> None:
    # Often enough that the others shrink well within a newcomer's settle period (5 s at the
    # provider's 60 s window, as often in API time on a time-scaled emulator); ten times as
    # often while someone waits on us or we on them (those waits cost slots on the key). While
    # the records stream in, a third as often: a newcomer's record comes as it is counted and
    # makes us count at once, a leaver's says it left, so a count only backs a lost event up
    # (counts cost CPU: at a 10x time scale an interval six times as long took 38 + 51 ms per
    # item, flow + server, to 34 + 43 ms).
    def interval() -> float:
        return min(5.0, max(0.1, share.settle / (4 if records.listening else 12)))

    next_count = time.monotonic() + interval()  # the join just counted
    storer = _Storer(records, share)
    sent = False  # whether the latest record went as an event
    try:
        while not stop.is_set():
            try:
                counted = time.monotonic() >= next_count
                count = await count_members(name, records.client) if counted else None
                if counted:
                    next_count = time.monotonic() + interval()
                # Read at every count (after it: a newcomer's record is out before it is counted), to
                # see a newcomer waiting for a record newer than ours; not while the count says we
                # are alone and we take the whole key (no other record matters then).
                alone = count == 1 and share.members == 1
                known = await records.read() \
                    if (counted and not alone) or share.waiting or (share.members > 1 and share.latest == 1) else None
                # Both applied at once: a count that still shows a member whose leave record we took
                # (its slot goes back after the record, seconds later on a loaded server) shrank us
                # for the length of the read, until the records grew us back.
                members = share.members
                if count is not None:
                    share.observe(count)
                if known is not None:
                    _take(share, known, members)
                # Sent at once, stored in the background: a store on a loaded SQLite server can wait
                # seconds (measured: 2 s, 6 s), and a waiting newcomer must go on reading meanwhile.
                # An acknowledgement once waited behind a heartbeat's store while the key's slots
                # stood idle (that store's failure was logged 30 ms before the acknowledgement
                # came). Unsent (no event channel), a record is published only once stored, so the
                # next one waits for that.
                if share.record_due and (sent or not storer.busy):
                    sent = await _send(records, share.record(), share, storer)
            except Exception as exc:  # keep the last share; try again next time
                log.warning("could not follow the processes using this key (%s: %s)", type(exc).__name__, exc)
                if share.waiting:
                    share.on_records([])  # unreadable: start once a settle period has passed
            if await _pause(stop, nudge, interval() / 10 if share.urgent else interval()):
                next_count = 0.0  # another member's record changed (a newcomer is counted before it waits)
    finally:
        await storer.drain()  # the left record must come after it


async def _pause(stop: asyncio.Event, nudge: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``, or until ``stop`` or ``nudge`` is set; whether ``nudge`` was (it is cleared)."""
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(nudge.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
    nudged = nudge.is_set()
    nudge.clear()
    return nudged


async def _publish(records: Records, record: Record, share: KeyShare, *, announce: bool = True) -> None:
    """Send ``record`` as an event (unless not ``announce``: sent already), then store it; a failed
    store raises, after retrying a busy server for ``JOIN_PATIENCE``. For the records that must be
    stored: a newcomer's first (every member counted has a record) and a leaver's last."""
    if announce:
        await records.announce(record)  # first: the variable write may wait seconds
    with _patient():
        await records.write(record)
    share.published(record)


async def _send(records: Records, record: Record, share: KeyShare, storer: _Storer) -> bool:
    """Send ``record`` as an event now and have ``storer`` store it; whether it was sent. It is
    published once it reached the others either way: a newcomer may start on the event alone, so
    what the record offers is settled then, even if the store fails. A record neither sent nor
    stored is tried again when due."""
    sent = await records.announce(record)
    if sent:
        share.published(record)
    storer.put(record, sent)
    return sent


class _Storer:
    """Stores a member's records in the background, one at a time and only the newest waiting:
    a variable never goes back to an older record, and slow stores do not pile up."""

    def __init__(self, records: Records, share: KeyShare) -> None:
        self.records, self.share = records, share
        self._next: tuple[Record, bool] | None = None
        self._task: asyncio.Task | None = None

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def put(self, record: Record, sent: bool) -> None:
        self._next = (record, sent)  # replaces one not stored yet: only the newest matters
        if not self.busy:
            self._task = asyncio.create_task(self._run())

    async def drain(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while self._next is not None:
            (record, sent), self._next = self._next, None
            try:
                await self.records.write(record)
            except Exception as exc:  # expected now and then on a loaded server; the next one goes later
                log.info("could not store this process's record for the key yet (%s)%s", type(exc).__name__,
                         "; it went as an event" if sent else "")
                continue
            if not sent:
                self.share.published(record)


@contextlib.asynccontextmanager
async def leaves_in_background() -> AsyncIterator[None]:
    """Within this block a key's membership ends in the background (its last record and the
    release of its slot are Prefect writes: seconds on a loaded SQLite server) and the block's
    end waits for it: a flow writes its report meanwhile."""
    leaves: list[asyncio.Task] = []
    token = _background_leaves.set(leaves)
    try:
        yield
    finally:
        _background_leaves.reset(token)
        await asyncio.gather(*leaves, return_exceptions=True)


async def _leave(controller: TrafficController, membership: _Membership) -> None:
    membership.stop.set()
    if membership.task is not None:
        with contextlib.suppress(BaseException):
            await membership.task
    controller.share.observe(1)  # grows back only after the settle period


@contextlib.asynccontextmanager
async def key_membership(controller: TrafficController, fingerprint: str) -> AsyncIterator[None]:
    """Count this process among the users of the key while the block runs."""
    membership = _memberships.setdefault(id(controller), _Membership())
    membership.users += 1
    try:
        if membership.users == 1:
            if (leaving := _leaving.get(id(controller))) is not None:  # our last record comes first
                await asyncio.gather(leaving, return_exceptions=True)
            joined: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            membership.task = asyncio.create_task(_hold(controller, limit_name(fingerprint), membership.stop, joined))
            try:
                members = await joined
                if members > 1:
                    log.info("%d processes use this key: this one takes 1/%d of it once the others "
                             "acknowledge it (at most %.1fs)", members, members, controller.share.settle)
            except Exception as exc:
                if _busy(exc):
                    raise KeyCoordinationError(
                        f"Prefect stayed too busy for {JOIN_PATIENCE:g}s to count this run among the key's users "
                        f"({exc}); not starting, so as not to overrun another run's share. Nothing was spent.") from exc
                log.warning("running alone on the key: cannot register with Prefect (%s: %s)",
                            type(exc).__name__, exc)
        yield
    finally:
        membership.users -= 1
        if membership.users == 0:
            _memberships.pop(id(controller), None)
            key = id(controller)
            leave = _leaving[key] = asyncio.ensure_future(_leave(controller, membership))

            def forget(done: asyncio.Task) -> None:
                if _leaving.get(key) is done:  # not a later membership's leave
                    del _leaving[key]

            leave.add_done_callback(forget)
            background = _background_leaves.get()
            if background is None:
                await leave
            else:
                background.append(leave)
