"""The spend limit: the ledger's rule on a fake provider (any price, failures, ambiguous answers),
then over the emulator as a real HTTP server through the item's life without Prefect."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.collections import write_collection
from tests.fixtures.emulator import TEST_KEY
from tests.life import runtime_over
from tests.test_cli import tryon
from tryon import batch
from tryon.archive import Archive
from tryon.errors import OverBudget
from tryon.models import Prediction
from tryon.report import RunReport
from tryon.settings import FashnSettings
from tryon.traffic.budget import Budget

# -- the ledger on a fake provider -----------------------------------------------------------------

# One step of a fake run: submit a prediction whose worst case is ``worst`` and whose true price is
# ``price`` (≤ worst: the worst case is an upper bound), or end one in flight in some way.
SUBMIT = st.tuples(st.just("submit"), st.integers(1, 4), st.integers(0, 4))
END = st.tuples(st.sampled_from(["completed", "completed_no_header", "failed", "ambiguous", "refused"]),
                st.integers(0, 50), st.none())


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(0, 12), steps=st.lists(st.one_of(SUBMIT, END), max_size=60))
def test_what_the_provider_may_charge_never_exceeds_the_limit(limit, steps):
    """Whatever the order of submissions and ends, the credits the provider has charged or may
    still charge (a phantom behind an ambiguous answer at its worst) stay within the limit."""
    budget = Budget(limit)
    in_flight: list[tuple[object, str, int, int]] = []  # (reservation, id, worst, price)
    charged = may_charge = 0
    for n, (kind, a, b) in enumerate(steps):
        if kind == "submit":
            worst, price = a, min(b, a)
            reservation = budget.admit(worst)
            if reservation is not None:
                in_flight.append((reservation, f"p{n}", worst, price))
                may_charge += worst
        elif in_flight:
            reservation, pid, worst, price = in_flight.pop(a % len(in_flight))
            if kind == "ambiguous":  # no answer: the server may have created it and bill it (stays in may_charge)
                continue
            may_charge -= worst
            if kind == "refused":  # a clear refusal: nothing was created
                budget.release(reservation)
                continue
            budget.bind(reservation, pid)
            status = "failed" if kind == "failed" else "completed"
            header = None if kind == "completed_no_header" else (price if status == "completed" else 0)
            budget.settle(Prediction(id=pid, status=status, credits_used=header))
            budget.settle(Prediction(id=pid, status=status, credits_used=header))  # a repeat changes nothing
            charged += price if status == "completed" else 0
        # Predictions in flight and phantoms may yet be charged their worst case.
        assert charged + may_charge <= limit
        assert budget.charged >= charged and budget.charged + budget.held <= limit


def test_a_failed_prediction_is_released_and_a_phantom_never_is():
    budget = Budget(3)
    first, second = budget.admit(1), budget.admit(1)
    assert first is not None and second is not None and budget.admit(2) is None, "2 held, 2 more would not fit"
    budget.bind(first, "a")
    budget.settle(Prediction(id="a", status="failed", credits_used=0))
    assert (budget.charged, budget.held) == (0, 1), "a failed prediction is not charged"
    assert budget.admit(2) is not None, "its reservation went back to the budget"
    # ``second`` got an ambiguous answer: it stays held, and nothing further fits.
    assert (budget.held, budget.available, budget.admit(1)) == (3, 0, None)
    assert budget.reached


def test_without_a_limit_the_ledger_only_counts():
    budget = Budget()
    reservation = budget.admit(10_000)
    assert reservation is not None and budget.available is None
    budget.bind(reservation, "a")
    budget.settle(Prediction(id="a", status="completed", credits_used=4))
    assert (budget.charged, budget.held, budget.reached) == (4, 0, False)


def test_the_limit_comes_from_the_run_then_the_credentials_block_then_the_environment(monkeypatch):
    from blocks import FashnCredentials

    assert FashnSettings().max_credits is None, "no limit unless one is set"
    monkeypatch.setenv("TRYON_MAX_CREDITS", "50")
    assert FashnSettings().max_credits == 50
    assert FashnCredentials(api_key="fa-x").settings().max_credits == 50
    assert FashnCredentials(api_key="fa-x", max_credits=9).settings().max_credits == 9


# -- over the emulator ------------------------------------------------------------------------------

TIME_SCALE = 20.0


async def run_with_limit(emulator, spec, archive: Archive, limit: int | None, *, partial: bool = True,
                         fund: bool = True) -> tuple[batch.Plan, RunReport]:
    """One run through tryon.batch with a budget: plan, check it (``fund``), run, report."""
    collection = await batch.load_and_validate(str(spec))
    planned = await batch.plan(collection, archive)
    budget = Budget(limit)
    if fund:
        planned.fund(budget, partial=partial)
    report = RunReport.start(collection.name, collection.model_name)
    report.max_credits = limit
    async with runtime_over(emulator, archive, budget=budget) as runtime:
        async for entry in batch.run_items(runtime, planned):
            report.add(entry)
    assert limit is None or budget.charged <= limit
    return planned, report


async def test_partial_spends_up_to_the_limit_and_a_larger_limit_takes_the_rest(make_emulator, tmp_path):
    emulator = make_emulator(time_scale=TIME_SCALE)
    spec = write_collection(tmp_path, name="budget", garments=5, models=4)  # 20 items, 1 credit each
    archive = Archive(str(tmp_path / "archive"))

    planned, report = await run_with_limit(emulator, spec, archive, 7)
    stats = emulator.stats()
    assert stats["credits_charged"] <= 7 and stats["predictions"] == 7
    unfunded = report.unfunded()
    assert len(unfunded) == 13 and report.totals["archived"] == 7
    assert [e.credits_needed for e in unfunded] == [1] * 13
    assert [s.stage for s in planned.states] == ["archived"] * 7 + ["unfunded"] * 13, \
        "items run in spec order until the next would not fit"
    summary = report.summary_text()
    assert "13 unfunded" in summary and "left for the budget (13, at most 13 credits" in summary

    _, again = await run_with_limit(emulator, spec, archive, 20)
    assert again.totals["archived"] == 13 and again.totals["skipped"] == 7 and not again.unfunded()
    stats = emulator.stats()
    assert stats["predictions"] == 20 and stats["duplicate_hashes"] == 0, "nothing paid twice"
    assert stats["credits_charged"] == 20


async def test_the_limit_holds_under_ambiguous_answers_and_dropped_connections(make_emulator, tmp_path):
    """Every ambiguous answer may have created a prediction: its worst case stays held, so what
    the emulator created (each charged on completion) never exceeds the limit, without the
    plan's check (the ledger alone)."""
    emulator = make_emulator(time_scale=TIME_SCALE, seed=1,
                             faults={"server_error_after_rate": 0.1, "drop_after_rate": 0.1})
    spec = write_collection(tmp_path, name="budget", garments=5, models=4)
    archive = Archive(str(tmp_path / "archive"))

    _, report = await run_with_limit(emulator, spec, archive, 7, fund=False)
    stats = emulator.stats()
    assert stats["predictions"] <= 7, "every prediction created is 1 credit, whether or not we got its id"
    assert stats["credits_charged"] <= 7
    assert report.totals["archived"] + len(report.unfunded()) + report.totals["failed"] == 20
    assert len(report.unfunded()) >= 13
    assert sum(stats["injected"].values()) >= 1, "the seed injects faults into this run"
    assert report.totals["archived"] < stats["predictions"], "the phantoms took their share of the limit"


async def test_a_plan_over_the_limit_spends_nothing_without_partial(make_emulator, tmp_path):
    emulator = make_emulator(time_scale=TIME_SCALE)
    spec = write_collection(tmp_path, name="budget", garments=5, models=4)
    with pytest.raises(OverBudget, match="needs up to 20 credits, 13 over the limit of 7"):
        await run_with_limit(emulator, spec, Archive(str(tmp_path / "archive")), 7, partial=False)
    assert emulator.stats()["predictions"] == 0


def test_the_dry_run_says_the_same_without_prefect(make_emulator, tmp_path):
    emulator = make_emulator(time_scale=TIME_SCALE)
    spec = write_collection(tmp_path, name="budget", garments=5, models=4)
    env = {"FASHN_API_KEY": TEST_KEY, "FASHN_BASE_URL": emulator.url}
    over = tryon("run", str(spec), "--dry-run", "--max-credits", "7", "--archive", str(tmp_path / "a"), env=env)
    assert over.returncode == 1
    assert "needs up to 20 credits, 13 over the limit of 7 credits" in over.stdout
    partial = tryon("run", str(spec), "--dry-run", "--max-credits", "7", "--partial", "--archive",
                    str(tmp_path / "a"), env={**env, "TRYON_MAX_CREDITS": "1"})
    assert partial.returncode == 0, partial.stdout + partial.stderr
    assert "13 left for the budget; at most 7 credits (limit 7)" in partial.stdout
    from_env = tryon("run", str(spec), "--dry-run", "--archive", str(tmp_path / "a"),
                     env={**env, "TRYON_MAX_CREDITS": "19"})
    assert from_env.returncode == 1 and "1 over the limit of 19 credits" in from_env.stdout
    assert all("NO_PREFECT" in r.stdout for r in (over, partial, from_env))
    assert emulator.stats()["predictions"] == 0
