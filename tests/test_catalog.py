"""Finding specs, their dates, and the inbox ledger (local folders and moto's S3)."""

from __future__ import annotations

import datetime as dt

from tests.collections import write_collection
from tryon.archive import Archive
from tryon.catalog import InboxLedger, find_specs, folder_date, in_range, spec_date, spec_digest


async def test_find_specs_by_prefix_and_glob(tmp_path):
    for day in ("2026-11-01", "2026-11-02"):
        write_collection(tmp_path / "specs" / day, name=f"c{day[-1]}")
    (tmp_path / "specs" / "notes.txt").write_text("not a spec")
    (tmp_path / "specs" / ".hidden.yaml").write_text("name: x")
    everything = await find_specs([str(tmp_path / "specs")])
    assert [p.rsplit("/", 2)[-2:] for p in everything] == [["2026-11-01", "c1.yaml"], ["2026-11-02", "c2.yaml"]]
    one = await find_specs([str(tmp_path / "specs" / "*-02" / "*.yaml"), str(tmp_path / "specs" / "2026-11-02")])
    assert one == everything[1:], "a glob, and duplicates across patterns counted once"
    assert await find_specs([str(tmp_path / "nowhere")]) == []


async def test_spec_date_from_the_spec_then_from_the_folder(tmp_path):
    dated = write_collection(tmp_path / "20261105", name="dated")
    dated.write_text(dated.read_text() + "date: 2026-10-31\n")
    undated = write_collection(tmp_path / "20261105", name="undated")
    assert await spec_date(str(dated)) == dt.date(2026, 10, 31)
    assert await spec_date(str(undated)) == dt.date(2026, 11, 5)
    assert folder_date("s3://b/x/2026-13-40/spec.yaml") is None
    assert in_range(dt.date(2026, 11, 5), dt.date(2026, 11, 1), None)
    assert not in_range(dt.date(2026, 11, 5), None, dt.date(2026, 11, 4))
    assert not in_range(None, dt.date(2026, 11, 1), None) and in_range(None, None, None)


async def test_ledger_remembers_content_so_a_changed_spec_runs_again(s3, tmp_path):
    spec = write_collection(tmp_path, name="inbox-one")
    ledger = InboxLedger(Archive(s3.url("archive")))
    digest = await spec_digest(str(spec))
    assert not await ledger.is_processed(str(spec), digest)
    await ledger.record(str(spec), digest, "COMPLETED", flow_run_id="abc")
    assert await ledger.is_processed(str(spec), digest)
    spec.write_text(spec.read_text().replace("performance", "quality"))
    assert not await ledger.is_processed(str(spec), await spec_digest(str(spec)))
    assert s3.fs().find(s3.url("archive", "_tryon", "inbox")), "kept in the archive, beside the collections"


def test_idempotency_key_is_stable_for_the_same_work_and_changes_with_it():
    from flows.launch import idempotency_key

    params = {"spec": "s3://b/specs/a.yaml", "model_name": "tryon-v1.6", "force": False}
    key = idempotency_key("backfill", params, "d1", 0)
    assert key == idempotency_key("backfill", dict(reversed(list(params.items()))), "d1", 0)
    others = {idempotency_key("backfill", params, "d2", 0), idempotency_key("backfill", params, "d1", 1),
              idempotency_key("backfill", {**params, "force": True}, "d1", 0)}
    assert key not in others and len(others) == 3
