"""One source for each fact: the model registry, and the default limits in settings."""

from __future__ import annotations

import inspect
from typing import get_args

import pytest
from pydantic import TypeAdapter

from blocks.credentials import FashnCredentials
from flows.params import InlineCollection, Mode, ModelName
from tryon.models import (
    ACCEPTED_MODES,
    DEFAULT_MODEL_NAME,
    INPUT_SCHEMAS,
    LEGACY_MODEL_NAME,
    MODELS,
    OUTPUT_SIZES,
    credits_for,
    input_schema,
    validate_inputs,
)
from tryon.settings import FashnSettings, Limit
from tryon.traffic.controller import TrafficController
from tryon.traffic.latency import DEFAULT_PRIORS, LatencyModel

LIMITS = ("run_limit", "status_limit", "credits_limit")
IMAGES = {"model_image": "https://x/m.jpg", "garment_image": "https://x/g.jpg"}


def test_form_choices_are_the_registry():
    assert get_args(ModelName) == tuple(MODELS)
    assert set(get_args(Mode)) == {mode for spec in MODELS.values() for mode in spec.modes}
    assert get_args(Mode) == ACCEPTED_MODES
    assert TypeAdapter(ModelName).json_schema()["enum"] == list(MODELS)
    assert TypeAdapter(Mode).json_schema()["enum"] == list(ACCEPTED_MODES)
    assert InlineCollection.model_fields["model_name"].default == DEFAULT_MODEL_NAME in MODELS


def test_derived_views_follow_the_registry():
    assert INPUT_SCHEMAS == {name: spec.inputs for name, spec in MODELS.items()}
    assert OUTPUT_SIZES == {name: spec.output_size for name, spec in MODELS.items()}
    assert MODELS[LEGACY_MODEL_NAME].legacy
    for name, spec in MODELS.items():
        assert input_schema(name) is spec.inputs
        assert set(spec.modes) == set(spec.latency_prior)  # a prior for every mode it accepts
    with pytest.raises(KeyError, match="known"):
        input_schema("tryon-v9")


def test_latency_priors_come_from_the_registry():
    assert DEFAULT_PRIORS == dict(MODELS[DEFAULT_MODEL_NAME].latency_prior)
    model = LatencyModel()
    for name, spec in MODELS.items():
        for mode in spec.modes:
            assert model.prior((name, mode)) == pytest.approx(spec.latency_prior[mode])
    assert LatencyModel(priors={"balanced": 3.0}).prior((DEFAULT_MODEL_NAME, "quality")) == 3.0


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("num_samples", [1, 2, 4])
def test_credits_are_num_samples_times_per_output(name, num_samples):
    spec = MODELS[name]
    inputs = {**IMAGES, "num_samples": num_samples}
    assert credits_for(name, inputs) == num_samples * spec.credits_per_output
    assert spec.credits(validate_inputs(name, inputs)) == num_samples * spec.credits_per_output


def test_credits_default_to_the_schema_num_samples():
    for name, spec in MODELS.items():
        assert credits_for(name, IMAGES) == spec.inputs.model_fields["num_samples"].default * spec.credits_per_output


def test_block_defaults_are_the_settings_defaults():
    for name in LIMITS:
        assert Limit.parse(FashnCredentials.model_fields[name].default) == FashnSettings.model_fields[name].default
    assert FashnCredentials.model_fields["max_in_flight"].default == FashnSettings.model_fields["max_in_flight"].default
    block = FashnCredentials(api_key="fa-test")
    settings = block.settings()
    for name in (*LIMITS, "max_in_flight"):
        assert getattr(settings, name) == FashnSettings.model_fields[name].default


def test_controller_defaults_are_the_settings_defaults():
    parameters = inspect.signature(TrafficController.__init__).parameters
    for name in (*LIMITS, "max_in_flight"):
        assert parameters[name].default == FashnSettings.model_fields[name].default
    controller = TrafficController()
    for endpoint in ("run", "status", "credits"):
        assert controller.limiters[endpoint].limit == FashnSettings.model_fields[f"{endpoint}_limit"].default
