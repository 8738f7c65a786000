"""The soak (bench/soak.py), reduced for CI: 120 items through the real flow in a child process
with every fault the emulator can inject and a flaky archive, SIGKILLed at a random point and
run again. The checks compare the archive and the report with the emulator's own records."""

from __future__ import annotations

import pytest

from bench import soak


@pytest.mark.timeout(600)
def test_soak_reduced_every_fault_sigkill_and_resume(prefect_server, tmp_path):
    import prefect.settings

    result = soak.run_soak(items=120, time_scale=50.0, seed=7, workdir=tmp_path,
                           prefect_api_url=prefect.settings.PREFECT_API_URL.value(), timeout=400, verbose=False)
    figures = soak.analyse(result)
    soak.print_figures(figures)  # shown by pytest when the test fails
    assert figures["problems"] == []

    # The soak exercised what it claims to, so a pass means something.
    assert result.killed and result.runs[0]["rc"] == -9, "the first run was killed with SIGKILL"
    assert figures["items"] == 120 and figures["lost"] == 0
    assert figures["archived"] >= 60 and figures["sha256_checked"] >= figures["archived"]
    injected = figures["injected"]
    assert injected.get("500_after_create", 0) + injected.get("dropped_after_create", 0) > 0
    assert injected.get("archive_write_before", 0) + injected.get("archive_write_after", 0) > 0
    assert figures["failed_by_reason"].get("ImageLoadError", 0) > 0
    assert figures["failed_by_reason"].get("PipelineError", 0) > 0, "retries exhausted on the stubborn garment"
    assert sum(v for k, v in figures["duplicates_explained"].items() if k.startswith("retryable")) > 0


def test_soak_check_catches_what_it_should(tmp_path):
    """The checks fail on a lost item, an unexplained duplicate, a wrong sha256 and a 429."""
    label = "g0000__m00"
    folder = tmp_path / "archive" / soak.COLLECTION / soak.MODEL_NAME / label
    folder.mkdir(parents=True)
    (folder / "output_0.png").write_bytes(b"not what was served")
    images = {"garment_image": "G", "model_image": "M"}
    first = {"id": "p1", "created": 1.0, "status": "completed", "failure": None, "answer": "ok", "images": images,
             "served_sha256": [["0" * 64]]}
    second = {**first, "id": "p2", "created": 2.0}
    result = soak.SoakResult(
        items=2, time_scale=50, seed=0, labels=[label, "g0001__m00"], archive=tmp_path / "archive", kill_target=1,
        predictions=[first, second], stats={"too_many_requests": {"ConcurrencyLimitExceeded": 1}},
        report={"items": [{"label": label, "state": "skipped"}]},
        results={label: {"state": "archived", "prediction_id": "p2", "prediction_ids": ["p2"],
                         "outputs": [{"index": 0, "name": "output_0.png", "sha256": "1" * 64}]}},
        garment_of={"G": "g0000"}, model_of={"M": "m00"},
    )
    problems = " | ".join(soak.check(result))
    assert "1 items lost: g0001__m00" in problems
    assert "differ from what the emulator served" in problems
    assert "1 unexplained duplicate predictions" in problems
    assert "429s the emulator was not told to inject" in problems


@pytest.mark.timeout(600)
def test_soak_with_webhooks_recovers_every_ambiguous_answer_whose_webhook_came(prefect_server, tmp_path):
    import prefect.settings

    result = soak.run_soak(items=120, time_scale=50.0, seed=11, workdir=tmp_path, webhooks=True,
                           prefect_api_url=prefect.settings.PREFECT_API_URL.value(), timeout=400, verbose=False)
    figures = soak.analyse(result)
    soak.print_figures(figures)
    assert figures["problems"] == []
    assert figures["items"] == 120 and figures["lost"] == 0
    injected = figures["injected"]
    assert injected.get("500_after_create", 0) + injected.get("dropped_after_create", 0) > 0
    assert figures["ambiguous_recovered"] > 0 and figures["recovered_ambiguous_flagged"] > 0
    assert injected.get("webhook_lost", 0) > 0
