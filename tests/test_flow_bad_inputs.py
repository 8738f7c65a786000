"""Bad input and a hostile provider, through the real flow (emulator over HTTP, Prefect server).

Each case ends with a clear error naming the place, or with every item in the report (archived,
or failed with its reason), and with nothing spent that did not have to be. Spec-level problems
(malformed files, ids, images, values, a huge streamed CSV) are in test_collection.py and
test_images.py; an item's own paths (a forgotten prediction, an expired output, ambiguous answers,
credits or the key gone mid-run) are in test_life_paths.py, without Prefect; these are the ones
only a run of the flow can show.
"""

from __future__ import annotations

from tests.fixtures.emulator import TEST_KEY
from tests.test_flow_faults import run_flow, url_collection


def calls(emulator) -> dict[str, dict[str, int]]:
    return emulator.stats()["requests"]


async def test_a_bad_spec_fails_the_run_before_any_call(prefect_server, make_emulator, env_for, tmp_path):
    emulator = make_emulator()
    env_for(emulator, 20.0)
    spec = url_collection(tmp_path, emulator, garments=["a", "b"])
    spec.write_text(spec.read_text().replace("mode: performance", "mode: fastest\n  num_samples: 9"))
    state = await run_flow(spec=str(spec), archive=str(tmp_path / "archive"))
    assert state.is_failed()
    assert "inputs.mode: 'fastest'" in state.message and "inputs.num_samples: 9" in state.message
    assert calls(emulator) == {}, "not even the balance was asked"


async def test_missing_api_key_is_refused_before_any_call(prefect_server, make_emulator, env_for, tmp_path,
                                                          monkeypatch):
    emulator = make_emulator()
    env_for(emulator, 20.0)
    monkeypatch.delenv("FASHN_API_KEY")
    monkeypatch.chdir(tmp_path)  # no .env to fall back on
    state = await run_flow(spec=str(url_collection(tmp_path, emulator, garments=["a"])), archive="archive")
    assert state.is_failed() and "FASHN_API_KEY" in state.message
    assert calls(emulator) == {}


async def test_a_wrong_key_stops_at_the_first_401(prefect_server, make_emulator, env_for, tmp_path, monkeypatch):
    emulator = make_emulator()
    env_for(emulator, 20.0)
    monkeypatch.setenv("FASHN_API_KEY", "fa-wrong-key")
    state = await run_flow(spec=str(url_collection(tmp_path, emulator, garments=["a", "b", "c"])),
                           archive=str(tmp_path / "archive"))
    assert state.is_failed() and "UnauthorizedAccess" in state.message
    assert calls(emulator) == {"credits": {"401": 1}}, "one call, then nothing"
    assert "fa-wrong-key" not in state.message


async def test_a_balance_too_small_refuses_to_start(prefect_server, make_emulator, env_for, tmp_path):
    emulator = make_emulator(keys={TEST_KEY: 3})
    env_for(emulator, 20.0)
    state = await run_flow(spec=str(url_collection(tmp_path, emulator, garments=["a", "b"], models=2)),
                           archive=str(tmp_path / "archive"))
    assert state.is_failed() and "needs up to 4 credits but the balance is 3" in state.message
    assert "run" not in calls(emulator)


async def test_an_archive_that_cannot_be_written_is_found_before_any_credit(prefect_server, make_emulator, env_for,
                                                                            tmp_path, s3):
    emulator = make_emulator()
    env_for(emulator, 20.0)
    spec = url_collection(tmp_path, emulator, garments=["a"])
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the archive's folder should be")
    for archive in (str(blocker / "archive"), "s3://no-such-bucket-here/archive"):
        state = await run_flow(spec=str(spec), archive=archive)
        assert state.is_failed() and "is not writable" in state.message and archive in state.message
    assert calls(emulator) == {}
