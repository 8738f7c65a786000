"""Secret hygiene: a run with a recognisable API key leaves the key nowhere a person or a
machine could read it afterwards, and no base64 image body is logged."""

from __future__ import annotations

import asyncio
import logging

from pydantic import SecretStr

from tests.collections import write_collection

CANARY = "fa-SECRET-canary-7f3a9c"


async def test_the_key_appears_in_no_log_artifact_report_or_archive_object(prefect_server, make_emulator, monkeypatch,
                                                                         tmp_path, caplog):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    from flows.collection import tryon_collection

    emulator = make_emulator(keys={CANARY: 1000})
    monkeypatch.setenv("FASHN_API_KEY", CANARY)
    monkeypatch.setenv("FASHN_BASE_URL", emulator.url)
    # Local images: they travel as base64 data URIs, which must not reach any log or file either.
    spec = write_collection(tmp_path, name="secrets", garments=2, models=1)
    archive = tmp_path / "archive"
    caplog.set_level(logging.DEBUG)
    state = await tryon_collection(spec=str(spec), archive=str(archive), return_state=True)
    assert state.is_completed(), state.message
    flow_run_id = state.state_details.flow_run_id

    texts: dict[str, str] = {f"log:{r.name}": r.getMessage() for r in caplog.records}
    async with get_client() as client:
        for _ in range(20):  # logs reach the server in batches
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            if any("report at" in log.message for log in logs):
                break
            await asyncio.sleep(0.25)
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        flow_run = await client.read_flow_run(flow_run_id)
    assert logs, "the run's logs reached the server"
    texts.update({f"server-log:{i}": log.message for i, log in enumerate(logs)})
    texts.update({f"artifact:{a.key}": str(a.data) + str(a.description) for a in artifacts})
    texts["flow-run-parameters"] = str(flow_run.parameters)
    files = [p for p in archive.rglob("*") if p.is_file()]
    assert any(p.name == "result.json" for p in files) and any(p.suffix == ".png" for p in files)
    for path in files:
        assert CANARY.encode() not in path.read_bytes(), f"the key leaked into {path}"
        if path.suffix in (".json", ".txt", ".html"):
            texts[str(path)] = path.read_text()
    for where, text in texts.items():
        assert CANARY not in text, f"the key leaked into {where}"
        assert ";base64," not in text, f"a base64 body was written to {where}"


def test_block_fields_holding_secrets_are_secret():
    from blocks import FashnCredentials, TryonArchive

    credentials = FashnCredentials(api_key=CANARY)
    archive = TryonArchive(url="s3://bucket/archive", storage_options={"secret": CANARY})
    assert isinstance(FashnCredentials.model_fields["api_key"].annotation, type) and \
        FashnCredentials.model_fields["api_key"].annotation is SecretStr
    for block in (credentials, archive):
        assert CANARY not in repr(block) and CANARY not in str(block.model_dump())
