"""One source for each fact: the model registry, and the default limits in settings."""

from __future__ import annotations

import inspect
from typing import get_args

import pytest
from pydantic import TypeAdapter

from blocks.credentials import FashnCredentials
from flows.params import AS_IN_SPEC, InlineCollection, ModeChoice, ModelChoice, ModelName
from tryon.models import (
    ACCEPTED_MODES,
    DEFAULT_MODE,
    DEFAULT_MODEL_NAME,
    IMAGE_FIELDS,
    INPUT_SCHEMAS,
    LEGACY_MODEL_NAME,
    MODELS,
    credits_for,
    input_schema,
    validate_inputs,
)
from tryon.settings import FashnSettings, Limit
from tryon.traffic.controller import TrafficController
from tryon.traffic.latency import LatencyModel

LIMITS = ("run_limit", "status_limit", "credits_limit")
IMAGES = {"model_image": "https://x/m.jpg", "garment_image": "https://x/g.jpg"}


def test_form_choices_are_the_registry():
    assert get_args(ModelName) == tuple(MODELS)
    assert get_args(ModelChoice) == (AS_IN_SPEC, *MODELS)
    assert set(get_args(ModeChoice)) == {AS_IN_SPEC} | {mode for spec in MODELS.values() for mode in spec.modes}
    assert get_args(ModeChoice) == (AS_IN_SPEC, *ACCEPTED_MODES)
    assert TypeAdapter(ModelChoice).json_schema()["enum"] == [AS_IN_SPEC, *MODELS]
    assert TypeAdapter(ModeChoice).json_schema()["enum"] == [AS_IN_SPEC, *ACCEPTED_MODES]
    assert InlineCollection.model_fields["model_name"].default == DEFAULT_MODEL_NAME in MODELS


def test_derived_views_follow_the_registry():
    assert INPUT_SCHEMAS == {name: spec.inputs for name, spec in MODELS.items()}
    assert MODELS[LEGACY_MODEL_NAME].legacy
    for name, spec in MODELS.items():
        assert input_schema(name) is spec.inputs
        assert set(spec.modes or [DEFAULT_MODE]) == set(spec.latency_prior)  # a prior for every mode it accepts
        assert set(spec.image_fields) <= set(IMAGE_FIELDS)
        assert set(spec.row_fields) <= set(spec.inputs.model_fields)
    with pytest.raises(KeyError, match="known"):
        input_schema("tryon-v9")


def test_latency_priors_come_from_the_registry():
    model = LatencyModel()
    for name, spec in MODELS.items():
        for mode in spec.modes:
            assert model.prior((name, mode)) == pytest.approx(spec.latency_prior[mode])
    assert model.prior(("unknown-model", "quality")) == MODELS[DEFAULT_MODEL_NAME].latency_prior["quality"]


def images_for(name: str) -> dict[str, str]:
    spec = MODELS[name]
    return {spec.garment_field: "https://x/g.jpg", spec.model_field: "https://x/m.jpg"}


@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if s.outputs_field])
@pytest.mark.parametrize("outputs", [1, 2, 4])
def test_credits_are_outputs_times_per_output(name, outputs):
    spec = MODELS[name]
    inputs = {**images_for(name), spec.outputs_field: outputs}
    per_output = spec.credits_per_output(spec.applied(inputs))
    assert credits_for(name, inputs) == outputs * per_output
    assert spec.credits(validate_inputs(name, inputs)) == outputs * per_output


def test_credits_default_to_the_schema_outputs():
    for name, spec in MODELS.items():
        outputs = spec.inputs.model_fields[spec.outputs_field].default if spec.outputs_field else 1
        assert credits_for(name, images_for(name)) == outputs * spec.credits_per_output(spec.applied({}))


def test_v16_price_is_exact_and_newer_models_are_upper_bounds():
    assert MODELS["tryon-v1.6"].credits_exact and MODELS["tryon-v1.6"].credits_per_output({}) == 1
    for name in ("tryon-max", "product-to-model"):  # "2-5" / "1-5" per output: the estimate is the top
        assert not MODELS[name].credits_exact
        assert MODELS[name].credits_per_output({}) == 5


def test_new_models_map_garments_to_product_image():
    assert MODELS["tryon-max"].garment_field == MODELS["product-to-model"].garment_field == "product_image"
    assert not MODELS["tryon-max"].model_optional and MODELS["product-to-model"].model_optional
    assert MODELS["tryon-v1.6"].garment_field == "garment_image"


def test_output_sizes_follow_the_options():
    spec = MODELS["tryon-max"]
    assert spec.size({"resolution": "1k"}) == (832, 1248)
    assert spec.size({"resolution": "4k"}) == (3328, 4992)
    p2m = MODELS["product-to-model"]
    assert p2m.size({"aspect_ratio": "1:1"}) == (1024, 1024)
    assert p2m.size({"aspect_ratio": "16:9", "resolution": "4k"}) == (5440, 3072)
    assert MODELS["tryon-v1.6"].size({"mode": "quality"}) == (864, 1296)


def test_product_to_model_refuses_model_image_with_image_prompt():
    with pytest.raises(ValueError, match="image_prompt cannot be combined with model_image"):
        validate_inputs("product-to-model", {"product_image": "https://x/p.jpg", "model_image": "https://x/m.jpg",
                                             "image_prompt": "https://x/i.jpg"})
    validate_inputs("product-to-model", {"product_image": "https://x/p.jpg"})  # garments alone


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
