"""A backfill runs its collections as concurrent subflows in one process: each collection's
progress artifact must hear of that collection only (no listener shared across runs)."""

from __future__ import annotations

import re

import pytest

from tests.collections import write_collection
from tests.fixtures.emulator import TIME_SCALE

SIZES = {"progress-big": (3, 2), "progress-small": (2, 1)}  # name: (garments, models) -> 6 and 2 items


@pytest.fixture
def recorded(monkeypatch):
    """Every progress artifact created and every update sent, as the flows call them."""
    import flows.artifacts

    created: dict[object, str] = {}  # artifact id -> collection, in the order of creation
    updates: list[tuple[object, float, str | None]] = []  # (artifact id, progress, description)
    real_create = flows.artifacts.acreate_progress_artifact
    real_update = flows.artifacts.aupdate_progress_artifact

    async def create(progress, *args, **kwargs):
        artifact_id = await real_create(progress, *args, **kwargs)
        match = re.fullmatch(r"Items of (.+) done", kwargs.get("description") or "")
        assert match, f"unexpected progress artifact description: {kwargs.get('description')!r}"
        created[artifact_id] = match.group(1)
        return artifact_id

    async def update(artifact_id, progress, *args, **kwargs):
        description = kwargs.get("description", args[0] if args else None)
        updates.append((artifact_id, progress, description))
        return await real_update(artifact_id, progress, *args, **kwargs)

    monkeypatch.setattr("flows.artifacts.acreate_progress_artifact", create)
    monkeypatch.setattr("flows.artifacts.aupdate_progress_artifact", update)
    return created, updates


@pytest.mark.timeout(300)
async def test_concurrent_subflows_each_report_only_their_own_progress(prefect_server, emulator, env_for,
                                                                       recorded, tmp_path):
    from flows.backfill import backfill

    env_for(emulator, TIME_SCALE)
    emulator.reset()
    specs = [write_collection(tmp_path / name, name=name, garments=g, models=m) for name, (g, m) in SIZES.items()]
    state = await backfill(collections=[str(s) for s in specs], archive=str(tmp_path / "archive"),
                           max_concurrent=2, return_state=True)
    assert state.is_completed(), state.message

    created, updates = recorded
    assert sorted(created.values()) == sorted(SIZES), f"progress artifacts created: {created}"
    by_artifact: dict[object, list[tuple[float, str | None]]] = {a: [] for a in created}
    for artifact_id, progress, description in updates:
        assert artifact_id in created, f"update of an artifact no collection created: {artifact_id}"
        by_artifact[artifact_id].append((progress, description))

    log = "\n".join(f"  {created.get(a, a)}'s artifact <- {p:6.1f}%  {d!r}" for a, p, d in updates)
    wrong = [f"  {created[a]}'s artifact got {p:.1f}% with {d!r}" for a, p, d in updates
             if not (d or "").startswith(f"{created[a]}/") or p > 100]
    assert not wrong, ("progress of one collection reached another's artifact (or went past 100%):\n"
                       + "\n".join(wrong) + "\nall updates, in order:\n" + log)
    for artifact_id, collection in created.items():
        history = by_artifact[artifact_id]
        assert history, f"{collection}'s progress artifact was never updated\nall updates:\n{log}"
        assert history[-1][0] == 100.0, (f"{collection}'s progress ended at {history[-1][0]:.1f}%, not 100%"
                                         f"\nall updates:\n{log}")
