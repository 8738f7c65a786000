"""Sharing one key between processes: the rule of :mod:`tryon.traffic.share` on a fake clock
(its own loop, over a fake membership server), and real processes on one key against the emulator,
counted through a Prefect server."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.collections import write_collection
from tryon.settings import Limit
from tryon.traffic import FakeClock, TrafficController
from tryon.traffic.members_file import FileMembership
from tryon.traffic.share import KeyShare, default_staleness, hold_share

ROOT = Path(__file__).resolve().parent.parent

RUN, STATUS = Limit(12, 60), Limit(6, 10)


def controller(clock: FakeClock | None = None) -> TrafficController:
    return TrafficController(RUN, STATUS, Limit(3, 10), 6, clock=clock)


W = controller().limiters["run"].window  # the longest window, margin included
D = default_staleness(W)
HOLD = W + D  # a member is counted this long after its last admission
LEASE = 2 * HOLD  # what hold_share asks for


class FakeKey:
    """The membership server: leases that lapse, and calls that take up to ``delay`` seconds and
    fail at ``failures`` after the server acted (the worst case: the caller does not know), or
    fail without acting while ``down``."""

    def __init__(self, clock: FakeClock, seed: int, delay: float = 0.0, failures: float = 0.0) -> None:
        self.clock, self.rng = clock, random.Random(seed)
        self.delay, self.failures, self.down = delay, failures, False
        self.leases: dict[int, float] = {}  # lease id -> expiry
        self.ids = iter(range(10**9))

    def held(self) -> int:
        return sum(1 for expiry in self.leases.values() if expiry > self.clock.now())

    async def call(self, act):
        took = self.rng.uniform(0, self.delay)
        acted_at = self.rng.uniform(0, took)
        await self.clock.sleep(acted_at)
        if self.down:
            raise ConnectionError("server down")
        result = act()
        await self.clock.sleep(took - acted_at)
        if self.rng.random() < self.failures:
            raise ConnectionError("answer lost")
        return result


class FakeMembership:
    """A member's calls; once ``dead`` (killed), it sends nothing more."""

    def __init__(self, key: FakeKey) -> None:
        self.key, self.lease_id, self.dead = key, None, False

    async def _call(self, act):
        if self.dead:
            raise ConnectionError("killed")
        return await self.key.call(act)

    async def join(self, lease: float) -> float:
        def grant():
            self.lease_id = next(self.key.ids)
            self.key.leases[self.lease_id] = self.key.clock.now() + lease
        await self._call(grant)
        return lease

    async def renew(self, lease: float) -> float:
        def renew():
            if self.key.leases.get(self.lease_id, -1) <= self.key.clock.now():
                raise LookupError("lease lapsed")
            self.key.leases[self.lease_id] = self.key.clock.now() + lease
        await self._call(renew)
        return lease

    async def count(self) -> int:
        return await self._call(self.key.held)

    async def leave(self) -> None:
        await self._call(lambda: self.key.leases.pop(self.lease_id, None))


class Member:
    """A process on the key: keeps to its share (the real loop) and sends run and status requests
    as fast as its limiters admit them, each stamped by the provider when admitted."""

    def __init__(self, key: FakeKey, stamps: dict[str, list[float]]) -> None:
        self.key, self.stamps = key, stamps
        self.controller = controller(key.clock)
        self.membership = FakeMembership(key)
        self.joined = asyncio.get_running_loop().create_future()
        self.stop = asyncio.get_running_loop().create_future()
        self.admitted: list[float] = []
        self.tasks = [asyncio.ensure_future(hold_share(self.membership, self.controller, self.joined, self.stop))]
        self.tasks += [asyncio.ensure_future(self._send(endpoint)) for endpoint in ("run", "status") for _ in range(2)]

    async def _send(self, endpoint: str) -> None:
        await self.joined
        while True:
            admission = await self.controller.acquire(endpoint)
            self.stamps[endpoint].append(self.key.clock.now())
            self.admitted.append(self.key.clock.now())
            await self.key.clock.sleep(0.05)
            admission.answered()

    async def leave(self) -> None:
        for task in self.tasks[1:]:
            task.cancel()
        self.stop.set_result(None)
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def kill(self) -> None:
        self.membership.dead = True  # its lease lapses on the server by itself
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def most_in_a_window(stamps: list[float], window: float) -> int:
    stamps, most, start = sorted(stamps), 0, 0
    for end, t in enumerate(stamps):
        while stamps[start] <= t - window:
            start += 1
        most = max(most, end - start + 1)
    return most


def assert_within_the_key(stamps: dict[str, list[float]]) -> None:
    assert most_in_a_window(stamps["run"], RUN.seconds) <= RUN.count, "run limit overrun"
    assert most_in_a_window(stamps["status"], STATUS.seconds) <= STATUS.count, "status limit overrun"


# -- the rule itself ---------------------------------------------------------------------------
def test_a_limit_is_shared_only_once_the_reads_cover_its_window_plus_d_without_a_break():
    share = KeyShare({"run": 60.0, "status": 10.0}, staleness=10.0)
    assert share.members(0.0) == {"run": 0, "status": 0}, "a newcomer admits nothing"
    for t in range(0, 75, 5):
        share.read(t, t + 0.1, 2)
    assert share.members(20.2) == {"run": 0, "status": 2}, "status once 10 + 10 s are covered"
    assert share.members(70.2) == {"run": 2, "status": 2}
    assert share.members(80.5) == {"run": 0, "status": 0}, "fenced: the last read was sent over D ago"
    share.read(90.0, 90.1, 1)  # after a break: a newcomer again
    assert share.members(90.2) == {"run": 0, "status": 0}


def test_a_smaller_count_takes_effect_only_once_it_held_for_the_window_plus_d():
    share = KeyShare({"run": 60.0}, staleness=10.0)
    for t in range(0, 75, 5):
        share.read(t, t, 3)
    for t in range(75, 200, 5):
        share.read(t, t, 1)
        assert share.members(t)["run"] == (3 if t <= 70 + 70 else 1), t  # the last 3 was read at 70


def test_a_newcomer_whose_first_count_shows_only_itself_takes_the_key_at_once_until_a_break():
    share = KeyShare({"run": 60.0, "status": 10.0}, staleness=10.0)
    share.read(0.0, 0.1, 1)
    assert share.members(0.1) == {"run": 1, "status": 1}, "alone on the key"
    share.read(5.0, 5.1, 2)
    assert share.members(5.1) == {"run": 2, "status": 2}, "another joined: half from its count on"
    share.read(30.0, 30.1, 1)  # after a break
    assert share.members(30.1) == {"run": 0, "status": 0}, "a newcomer again, not alone"
    share.reset()
    share.read(40.0, 40.1, 2)
    assert share.members(40.1) == {"run": 0, "status": 0}, "a first count of two waits W + D"


# -- the loop on a fake clock ------------------------------------------------------------------
async def drive(clock: FakeClock, body) -> None:
    await clock.run(body())


def test_a_newcomer_waits_one_window_plus_d_then_takes_its_share_and_a_leave_is_felt_late():
    clock = FakeClock()
    d = default_staleness(controller().limiters["run"].window)

    async def body():
        key, stamps = FakeKey(clock, 1), {"run": [], "status": []}
        first = Member(key, stamps)
        await clock.sleep(100)
        assert first.controller.limiters["run"].limit.count == 12
        second = Member(key, stamps)
        await clock.sleep(d)
        assert first.controller.limiters["run"].limit.count == 6, "the incumbent shrank within D"
        assert not second.admitted, "the newcomer waits"
        await clock.sleep(RUN.seconds + d)
        assert second.admitted, "and then starts"
        await second.leave()
        await clock.sleep(HOLD)
        assert first.controller.limiters["run"].limit.count == 6, "the leaver is counted W + D, then read"
        await clock.sleep(HOLD + d)
        assert first.controller.limiters["run"].limit.count == 12, "the whole key once its count held W + D"
        await first.leave()
        assert_within_the_key(stamps)

    asyncio.run(drive(clock, body))


def test_a_run_alone_on_the_key_admits_at_once():
    clock = FakeClock()

    async def body():
        key, stamps = FakeKey(clock, 4), {"run": [], "status": []}
        member = Member(key, stamps)
        await member.joined
        assert member.controller.limiters["run"].limit.count == RUN.count, "the whole key"
        await clock.sleep(0.1)
        assert member.admitted, "at once"
        await member.leave()

    asyncio.run(drive(clock, body))


async def test_a_file_membership_counts_every_process_on_it_and_a_killed_one_until_its_lease_ends(tmp_path):
    path = tmp_path / "tryon-keys" / "tryon-key-abc.json"
    first, second = FileMembership(path), FileMembership(path)
    assert await first.join(60) == 60 and await first.count() == 1
    await second.join(0.2)  # then killed: never renews, never leaves
    assert await first.count() == 2
    while await first.count() == 2:  # its lease ends on the wall clock; nothing else removes it
        await asyncio.sleep(0.01)
    assert await first.renew(30) == 30 and await FileMembership(path).count() == 1
    await first.leave()
    assert await second.count() == 0 and json.loads(path.read_text()) == {}


@pytest.mark.parametrize("how", ["leave", "kill"])
def test_a_newcomer_right_after_a_member_left_or_was_killed_waits_until_its_admissions_aged_out(how):
    clock = FakeClock()

    async def body():
        key, stamps = FakeKey(clock, 5), {"run": [], "status": []}
        first = Member(key, stamps)
        await clock.sleep(30)
        await (first.leave() if how == "leave" else first.kill())
        second = Member(key, stamps)
        await second.joined
        await clock.sleep(HOLD - 1)
        assert second.controller.limiters["run"].admitted == 0, "the one before is still counted: W + D"
        await clock.sleep(LEASE)
        assert second.controller.limiters["run"].admitted
        await second.leave()
        assert_within_the_key(stamps)

    asyncio.run(drive(clock, body))


def test_two_newcomers_at_once_on_a_free_key_do_not_both_take_it():
    clock = FakeClock()

    async def body():
        key, stamps = FakeKey(clock, 6), {"run": [], "status": []}
        members = [Member(key, stamps), Member(key, stamps)]
        await clock.sleep(3 * HOLD)
        assert all(member.admitted for member in members)
        for member in members:
            await member.leave()
        assert_within_the_key(stamps)

    asyncio.run(drive(clock, body))


def test_a_member_that_cannot_count_admits_nothing_and_after_a_break_waits_as_a_newcomer():
    clock = FakeClock()

    async def body():
        key, stamps = FakeKey(clock, 2), {"run": [], "status": []}
        member = Member(key, stamps)
        await clock.sleep(100)
        key.down = True
        await clock.sleep(30)
        quiet_from = clock.now()
        await clock.sleep(20)
        assert all(t <= quiet_from for t in member.admitted), "fenced while it cannot count"
        key.down = False
        back = clock.now()
        await clock.sleep(90)
        restarted = [t for t in member.admitted if t > quiet_from]
        span = member.controller.limiters["status"].window + default_staleness(member.controller.limiters["run"].window)
        assert restarted and min(restarted) >= back + span, "the whole span again, not at once"
        await member.leave()

    asyncio.run(drive(clock, body))


def test_a_lapsed_lease_makes_a_member_a_newcomer_again():
    clock = FakeClock()

    async def body():
        key, stamps = FakeKey(clock, 3), {"run": [], "status": []}
        member = Member(key, stamps)
        await clock.sleep(100)
        key.down = True  # renewals fail too: the lease lapses
        await clock.sleep(LEASE + 20)
        key.down = False
        assert key.held() == 0
        await clock.sleep(D + 1)
        assert key.held() == 1, "joined again"
        await member.leave()
        assert key.held() == 1, "and is counted W + D after its last admission"
        await clock.sleep(HOLD)
        assert key.held() == 0, "then no longer"

    asyncio.run(drive(clock, body))


# Members join, leave and are killed at random (some at once, some right after another left or was
# killed, on a key with or without a member that stays), with count reads late (up to D) or failing.
@settings(max_examples=int(os.environ.get("TRYON_SHARE_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    others=st.lists(st.tuples(st.one_of(st.floats(0, 150), st.sampled_from([0.0, 50.0])),  # start
                              st.floats(1, 200),  # length
                              st.booleans(),  # killed
                              st.one_of(st.none(), st.integers(0, 3)),  # starts right after this one ends
                              st.sampled_from([0.0, 0.5])),  # ... this many windows later
                    min_size=1, max_size=4),
    stays=st.booleans(),
    delay=st.sampled_from([0.0, 0.25, 0.5, 1.0]),  # the longest a call takes, in D
    failures=st.sampled_from([0.0, 0.1, 0.3]),
    seed=st.integers(0, 10**6),
)
def test_members_joining_leaving_and_dying_never_overrun_the_key_together(others, stays, delay, failures, seed):
    clock = FakeClock()
    starts: list[float] = []
    for start, length, _, after, gap in others:
        follows = after is not None and after < len(starts)
        starts.append(starts[after] + others[after][1] + gap * W if follows else start)
    ends = [start + other[1] for start, other in zip(starts, others)]
    settle = 2 * HOLD  # the stayer, fenced at worst, admits again within W + 2D
    end = max(ends) + settle

    async def body():
        key = FakeKey(clock, seed)
        stamps: dict[str, list[float]] = {"run": [], "status": []}
        stayers = [Member(key, stamps)] if stays else []
        for stayer in stayers:
            await stayer.joined
        key.delay, key.failures = delay * D, failures

        async def life(start: float, length: float, killed: bool) -> None:
            await clock.sleep(start - clock.now())
            member = Member(key, stamps)
            await clock.sleep(length)
            await (member.kill() if killed else member.leave())

        await asyncio.gather(*(life(start, other[1], other[2]) for start, other in zip(starts, others)))
        key.delay, key.failures = 0.0, 0.0  # the server recovers: every member that stays admits again
        recovered = clock.now()
        await clock.sleep(end - recovered)
        for stayer in stayers:
            assert any(t > recovered for t in stayer.admitted), "the member that stays admits again"
            await stayer.leave()
        assert_within_the_key(stamps)

    asyncio.run(drive(clock, body))


# -- over a real Prefect server ---------------------------------------------------------------
async def test_a_prefect_membership_takes_renews_and_gives_back_its_slot(prefect_server):
    from flows.coordination import PrefectMembership, limit_name
    from flows.prefect_api import PrefectApi

    async with PrefectApi.from_settings().client() as client:
        membership = PrefectMembership(client, limit_name(f"lease-{uuid.uuid4().hex[:12]}"))
        assert await membership.join(10) == 60, "the server's shortest lease"
        assert await membership.count() == 1
        assert await membership.renew(140) == 140  # raises unless the server renewed it
        await membership.leave()
        assert await membership.count() == 0
        other = PrefectMembership(client, membership.name)
        assert await other.join(60) == 60 and await membership.join(60) == 60, "the limit exists: joined again"
        assert await other.count() == 2
        await other.leave()
        await membership.leave()


async def test_over_prefect_a_run_alone_on_a_key_admits_at_once_and_one_right_after_it_waits(prefect_server):
    from flows.coordination import count_members, key_membership, limit_name

    fingerprint = f"alone-{uuid.uuid4().hex[:12]}"
    first = controller()
    async with key_membership(first, fingerprint):
        assert first.limiters["run"].limit.count == RUN.count, "the whole key"
        (await first.acquire("run")).answered()  # admitted at once: no wait for W + D
    assert await count_members(limit_name(fingerprint)) == 1, "counted W + D after its last admission"
    second = controller()
    async with key_membership(second, fingerprint):
        assert second.limiters["run"].next_admission() == float("inf"), "not alone: it waits"


async def test_a_join_outlasts_a_busy_server_and_a_join_refused_throughout_spends_nothing(prefect_server,
                                                                                        monkeypatch):
    import httpx

    from flows import coordination
    from flows.coordination import KeyCoordinationError, count_members, key_membership, limit_name

    send = httpx.AsyncClient.send
    refusals = {"left": 8}

    async def busy_increment(self, request, **kwargs):
        if request.url.path.endswith("/increment-with-lease") and refusals["left"] > 0:
            refusals["left"] -= 1
            return httpx.Response(503, json={"exception_message": "Service Unavailable"}, request=request)
        return await send(self, request, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "send", busy_increment)
    fingerprint = f"busy-{uuid.uuid4().hex[:12]}"
    async with key_membership(controller(), fingerprint):
        assert refusals["left"] == 0 and await count_members(limit_name(fingerprint)) == 1, "counted after all"

    monkeypatch.setattr(coordination, "JOIN_PATIENCE", 2.0)
    refusals["left"] = 10**6
    c = controller()
    with pytest.raises(KeyCoordinationError, match="Nothing was spent"):
        async with key_membership(c, fingerprint):
            raise AssertionError("ran without being counted")
    assert c.limiters["run"].next_admission() == float("inf"), "admits nothing"


OPENED = """
import asyncio, sys
from flows.opening import open_run
from flows.prefect_api import PrefectApi
from tryon.archive import Archive
from tryon.batch import begin, load_and_validate
from tryon.settings import FashnSettings
from tryon.traffic.budget import Budget

async def main(spec, archive):
    settings = FashnSettings()
    async with open_run(await load_and_validate(spec), settings, Archive(archive), force=False, reuse=True,
                        partial=False, budget=Budget(), api=PrefectApi.from_environment()) as run:
        begin(run.runtime, run.planned)
        await asyncio.gather(*run.runtime.begun.values())

asyncio.run(main(*sys.argv[1:]))
print("PREFECT_IMPORTED" if "prefect" in sys.modules else "NO_PREFECT")
"""


async def test_a_run_opened_on_a_user_s_server_joins_its_key_and_submits_without_importing_prefect(
        prefect_server, make_emulator, tmp_path):
    # What `tryon run` does before it imports Prefect, against a server of the user's.
    from prefect.settings import PREFECT_API_URL

    from flows.coordination import count_members, limit_name
    from tests.fixtures.emulator import TIME_SCALE, flow_env
    from tryon.settings import FashnSettings

    key = f"fa-opened-{uuid.uuid4().hex}"
    emulator = make_emulator(keys={key: 1000})
    spec = write_collection(tmp_path, garments=1, models=1, inputs={"mode": "performance"})
    env = {**os.environ, **flow_env(emulator, TIME_SCALE), "FASHN_API_KEY": key,
           "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", OPENED, str(spec), str(tmp_path / "archive")]
    result = await asyncio.to_thread(subprocess.run, argv, cwd=ROOT, env=env, capture_output=True, text=True,
                                     timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NO_PREFECT" in result.stdout
    assert sum(emulator.stats()["requests"]["run"].values()) == 1, "submitted"
    fingerprint = FashnSettings(api_key=key).key_fingerprint()
    assert await count_members(limit_name(fingerprint)) == 1, "counted through the server, W + D after it admitted"


GATED = """
import sys, time
from pathlib import Path
import flows.collection  # Prefect imported before the go: each run starts at once
while not Path(sys.argv[1]).exists():
    time.sleep(0.05)
from flows.cli import main
sys.argv = sys.argv[2:]
main()
"""


async def _until_members(fingerprint: str, n: int, *processes: subprocess.Popen) -> None:
    from flows.coordination import count_members, limit_name

    while True:
        try:
            if await count_members(limit_name(fingerprint)) >= n:
                return
        except Exception:  # the key's limit does not exist yet
            pass
        assert all(p.poll() in (None, 0) for p in processes), [p.returncode for p in processes]
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_runs_joining_a_key_and_one_killed_draw_no_rate_limit_429(prefect_server, make_emulator, tmp_path):
    # `tryon run` processes on one key through one Prefect server: the second starts while the
    # first runs, the third while both do, then the second is killed with SIGKILL (its slot stays
    # counted until its lease lapses) and a fourth starts at once; a fifth starts as soon as the
    # first has left.
    from prefect.settings import PREFECT_API_URL

    from tests.fixtures.emulator import TIME_SCALE, flow_env
    from tryon.settings import FashnSettings

    key = f"fa-share-{uuid.uuid4().hex}"
    emulator = make_emulator(keys={key: 10**6})
    env = {**os.environ, **flow_env(emulator, TIME_SCALE), "FASHN_API_KEY": key, "PYTHONPATH": str(ROOT),
           "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "WARNING"}
    # garments, times 6 models; quality: 2 s each here
    sizes = {"first": 12, "second": 6, "third": 3, "fourth": 2, "fifth": 2}  # the first runs alone at first

    def start(name: str) -> subprocess.Popen:
        spec = write_collection(tmp_path / name, name=name, garments=sizes[name], models=6,
                                inputs={"mode": "quality", "seed": list(sizes).index(name)})  # no pair shared
        argv = ["tryon", "run", str(spec), "--archive", str(tmp_path / "archive"), "--report", str(tmp_path / f"{name}.json")]
        return subprocess.Popen([sys.executable, "-c", GATED, str(tmp_path / f"go-{name}"), *argv],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    fingerprint = FashnSettings(api_key=key).key_fingerprint()
    processes = {name: start(name) for name in sizes}  # started at once, each run waits for its go
    for n, name in enumerate(("first", "second", "third"), 1):
        (tmp_path / f"go-{name}").touch()
        await _until_members(fingerprint, n, *processes.values())
    processes["second"].kill()
    await asyncio.to_thread(processes["second"].communicate)
    (tmp_path / "go-fourth").touch()  # right after a kill
    _, err = await asyncio.to_thread(processes["first"].communicate, timeout=300)
    assert processes["first"].returncode == 0, err[-3000:]
    (tmp_path / "go-fifth").touch()  # right after a leave
    for name in ("third", "fourth", "fifth"):
        _, err = await asyncio.to_thread(processes[name].communicate, timeout=300)
        assert processes[name].returncode == 0, err[-3000:]
    for name in ("first", "third", "fourth", "fifth"):
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["totals"].get("archived") == sizes[name] * 6, report["totals"]
    stats = emulator.stats()
    assert "RateLimitExceeded" not in stats["too_many_requests"], stats["too_many_requests"]
    assert stats["duplicate_hashes"] == 0, "every item submitted once"
    limits = stats["limits"]
    assert all(stats["most_in_window"][e] <= limits[e][0] for e in ("run", "status", "credits")), stats["most_in_window"]
