"""Collection specs: loading, the bad-input catalogue (every problem at once), items and item keys."""

from __future__ import annotations

import hashlib
import io
import json
import types

import fsspec
import pytest
from PIL import Image

from tryon import images
from tryon.spec.collection import CollectionSpec, Garment, ModelPhoto, Pair
from tryon.spec.items import Item, iter_items
from tryon.spec.key import item_key
from tryon.spec.loaders import load_spec
from tryon.spec.problems import Problem, SpecError
from tryon.spec.validation import validate_spec
from tryon.models import INPUT_SCHEMAS


def write_image(path, size=(60, 90), color="red", fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path):
    """A spec folder with two model photos and two garments."""
    write_image(tmp_path / "models" / "ava.jpg", color="red", fmt="JPEG")
    write_image(tmp_path / "models" / "bea.png", color="green")
    write_image(tmp_path / "garments" / "jacket-01.png", color="blue")
    write_image(tmp_path / "garments" / "jeans-02.png", color="navy")
    return tmp_path


GOOD_YAML = """
name: fw26-denim
model_name: tryon-v1.6
inputs: {mode: balanced, num_samples: 2}
models:
  - {id: ava, image: models/ava.jpg}
  - {id: bea, image: models/bea.png, inputs: {seed: 7}}
garments:
  - {id: jacket-01, image: garments/jacket-01.png, inputs: {category: tops, seed: 1}}
  - {id: jeans-02, image: garments/jeans-02.png, inputs: {category: bottoms}}
pairs: all
"""


def write(path, text: str):
    path.write_text(text)
    return str(path)


async def problems_of(path, **kwargs) -> list[Problem]:
    """Every problem of a spec, whether found while loading or while validating."""
    with pytest.raises(SpecError) as caught:
        spec = await load_spec(path, **kwargs)
        await validate_spec(spec)
    return caught.value.problems


def find(problems: list[Problem], location: str) -> Problem:
    matches = [p for p in problems if p.location == location]
    assert matches, f"no problem at {location}; got:\n" + "\n".join(map(str, problems))
    return matches[0]


# -- good specs -----------------------------------------------------------------------------------

async def test_yaml_spec_loads_validates_and_iterates(folder):
    spec = await load_spec(write(folder / "fw26.yaml", GOOD_YAML))
    await validate_spec(spec)
    items = iter_items(spec)
    assert isinstance(items, types.GeneratorType)
    items = list(items)
    assert [i.label for i in items] == ["jacket-01__ava", "jacket-01__bea", "jeans-02__ava", "jeans-02__bea"]
    assert spec.item_count() == 4
    first = items[1]
    assert first.collection == "fw26-denim" and first.model_name == "tryon-v1.6"
    # spec inputs <- garment inputs <- model inputs: the model's seed wins over the garment's
    assert first.inputs == {"mode": "balanced", "num_samples": 2, "category": "tops", "seed": 7,
                            "model_image": "models/bea.png", "garment_image": "garments/jacket-01.png"}
    assert items[0].inputs["seed"] == 1
    assert first.base_dir == str(folder)
    assert first.mode == "balanced"


async def test_json_spec_with_explicit_pairs_and_pair_inputs(folder):
    data = {
        "name": "fw26", "inputs": {"num_samples": 1},
        "models": [{"id": "ava", "image": "models/ava.jpg", "inputs": {"mode": "quality"}}],
        "garments": [{"id": "jacket-01", "image": "garments/jacket-01.png", "inputs": {"mode": "performance"}}],
        "pairs": [{"garment": "jacket-01", "model": "ava", "inputs": {"num_samples": 3}}],
    }
    spec = await load_spec(write(folder / "fw26.json", json.dumps(data)))
    await validate_spec(spec)
    [item] = list(iter_items(spec))
    assert item.inputs["mode"] == "quality"  # model over garment
    assert item.inputs["num_samples"] == 3  # pair over everything
    assert spec.item_count() == 1


async def test_model_name_override_and_default(folder):
    spec = await load_spec(write(folder / "fw26.yaml", GOOD_YAML), model_name_override="tryon-v1.5")
    assert spec.model_name == "tryon-v1.5"
    spec = await load_spec(write(folder / "plain.yaml", GOOD_YAML.replace("model_name: tryon-v1.6\n", "")))
    assert spec.model_name == "tryon-v1.6"


async def test_spec_and_images_on_an_fsspec_filesystem():
    root = "memory://specs-fsspec-test"
    fs = fsspec.filesystem("memory")
    buffer = io.BytesIO()
    Image.new("RGB", (20, 30)).save(buffer, format="PNG")
    fs.pipe_file(f"{root}/models/ava.jpg", buffer.getvalue())
    fs.pipe_file(f"{root}/garments/jacket-01.png", buffer.getvalue())
    fs.pipe_file(f"{root}/garments/jeans-02.png", buffer.getvalue())
    fs.pipe_file(f"{root}/fw26.yaml", GOOD_YAML.replace("models/bea.png", "models/missing.png").encode())
    spec = await load_spec(f"{root}/fw26.yaml")
    with pytest.raises(SpecError) as caught:
        await validate_spec(spec)
    [problem] = caught.value.problems
    assert problem.location == "models[1].image" and "not found" in problem.message


# -- the bad-input catalogue ----------------------------------------------------------------------

async def test_malformed_yaml_names_line_and_column(folder):
    problems = await problems_of(write(folder / "bad.yaml", "name: x\nmodels:\n  - {id: ava, image: [a.jpg\n"))
    [problem] = problems
    assert problem.where.startswith("bad.yaml line 4, column 1")
    assert "not valid YAML" in problem.message


async def test_malformed_json_names_line_and_column(folder):
    problems = await problems_of(write(folder / "bad.json", '{"name": "x",\n "models": [1,]\n}'))
    [problem] = problems
    assert problem.where == "bad.json line 2, column 15"
    assert "not valid JSON" in problem.message


async def test_yaml_that_is_not_a_mapping(folder):
    [problem] = await problems_of(write(folder / "list.yaml", "- a\n- b\n"))
    assert "must be a mapping" in problem.message


async def test_missing_spec_file_and_unknown_extension(folder):
    [problem] = await problems_of(str(folder / "nope.yaml"))
    assert "not found" in problem.message
    [problem] = await problems_of(write(folder / "spec.toml", "x"))
    assert "unknown extension" in problem.message


async def test_missing_fields_are_reported_with_every_other_problem(folder):
    problems = await problems_of(write(folder / "missing.yaml", """
name: fw26
models: [{image: models/ava.jpg}, {id: bea, image: models/bea.png}]
garments:
  - {id: jacket-01}
  - {id: ../x, image: garments/jeans-02.png, colour: blue}
  - {id: jeans-02, image: garments/nope.png}
"""))
    assert find(problems, "models[0].id").message == "is missing (required)"
    assert find(problems, "garments[0].image").message == "is missing (required)"
    assert "not a known field" in find(problems, "garments[1].colour").message
    # ...and, in the same error, the problems the structural ones did not hide
    assert find(problems, "garments[1].id").value == "'../x'"
    assert "not found" in find(problems, "garments[2].image").message


async def test_duplicate_ids(folder):
    problems = await problems_of(write(folder / "dup.yaml", """
name: fw26
models: [{id: ava, image: models/ava.jpg}, {id: ava, image: models/bea.png}]
garments: [{id: jacket-01, image: garments/jacket-01.png}, {id: jacket-01, image: garments/jeans-02.png},
           {id: jacket-01, image: garments/jeans-02.png}]
"""))
    assert str(find(problems, "models[1].id")) == "models[1].id: 'ava' is a duplicate (first at models[0])"
    assert "first at garments[0]" in find(problems, "garments[1].id").message
    assert "first at garments[0]" in find(problems, "garments[2].id").message


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "", ".hidden", "a..b", "x" * 129, "with space", "a__b"])
async def test_unsafe_ids(folder, bad_id):
    text = GOOD_YAML.replace("id: jeans-02", f"id: {json.dumps(bad_id)}")
    problems = await problems_of(write(folder / "unsafe.yaml", text))
    problem = find(problems, "garments[1].id")
    assert problem.value == repr(bad_id) if len(repr(bad_id)) <= 120 else problem.value.endswith("...")
    assert len(problems) == 1


async def test_unsafe_id_message_format(folder):
    problems = await problems_of(write(folder / "unsafe.yaml", GOOD_YAML.replace("id: jeans-02", "id: ../x")))
    assert str(problems[0]).startswith(
        "garments[1].id: '../x' is not safe as an object key (use letters, digits, '-', '_', '.'")


async def test_unsafe_collection_name(folder):
    problems = await problems_of(write(folder / "fw26.yaml", GOOD_YAML.replace("name: fw26-denim", "name: ../fw26")))
    assert find(problems, "name").value == "'../fw26'"


async def test_pairs_with_unknown_ids_and_duplicates(folder):
    text = GOOD_YAML.replace("pairs: all", """pairs:
  - {garment: jacket-01, model: ava}
  - {garment: jacket-99, model: ava}
  - {garment: jeans-02, model: zoe}
  - {garment: jacket-01, model: ava}
""")
    problems = await problems_of(write(folder / "pairs.yaml", text))
    assert str(find(problems, "pairs[1].garment")) == "pairs[1].garment: 'jacket-99' is not the id of a garment in this spec"
    assert find(problems, "pairs[2].model").value == "'zoe'"
    assert "listed twice" in find(problems, "pairs[3]").message
    assert len(problems) == 3


async def test_pairs_must_be_all_or_a_list(folder):
    problems = await problems_of(write(folder / "p.yaml", GOOD_YAML.replace("pairs: all", "pairs: some")))
    assert "must be 'all' or a list" in find(problems, "pairs").message


async def test_missing_and_unreadable_images(folder):
    (folder / "garments" / "notes.jpg").write_text("not a picture")
    (folder / "garments" / "empty.png").write_bytes(b"")
    text = (GOOD_YAML.replace("garments/jacket-01.png", "garments/notes.jpg")
            .replace("garments/jeans-02.png", "garments/empty.png")
            .replace("models/bea.png", "models/gone.png"))
    problems = await problems_of(write(folder / "img.yaml", text))
    assert "is not an image" in find(problems, "garments[0].image").message
    assert find(problems, "garments[0].image").value == "'garments/notes.jpg'"
    assert "is empty" in find(problems, "garments[1].image").message
    gone = find(problems, "models[1].image")
    assert "not found" in gone.message and str(folder / "models" / "gone.png") in gone.message


async def test_saved_reference_only_for_model_images(folder):
    text = GOOD_YAML.replace("models/bea.png", "saved:bea").replace("garments/jeans-02.png", "saved:jeans")
    problems = await problems_of(write(folder / "saved.yaml", text))
    assert [p.location for p in problems] == ["garments[1].image"]
    assert "only model images" in problems[0].message


async def test_enormous_image_is_accepted_and_downscaled(folder):
    write_image(folder / "garments" / "huge.png", size=(4000, 3000))
    spec = await load_spec(write(folder / "huge.yaml", GOOD_YAML.replace("garments/jeans-02.png", "garments/huge.png")))
    await validate_spec(spec)  # not rejected
    item = [i for i in iter_items(spec) if i.garment_id == "jeans-02"][0]
    value = await images.to_api_value(item.inputs["garment_image"], item.base_dir)
    head, body = value.split(",", 1)
    assert head == "data:image/jpeg;base64"
    import base64
    with Image.open(io.BytesIO(base64.b64decode(body))) as img:
        assert max(img.size) == 2000 and img.format == "JPEG"


async def test_unknown_model_name_lists_the_known_ones(folder):
    problems = await problems_of(write(folder / "m.yaml", GOOD_YAML.replace("tryon-v1.6", "tryon-v9")))
    problem = find(problems, "model_name")
    assert problem.value == "'tryon-v9'"
    for known in INPUT_SCHEMAS:
        assert known in problem.message


async def test_unknown_model_name_from_the_override(folder):
    problems = await problems_of(write(folder / "m.yaml", GOOD_YAML), model_name_override="tryon-max-typo")
    assert find(problems, "model_name").value == "'tryon-max-typo'"


async def test_invalid_input_values(folder):
    text = (GOOD_YAML.replace("{mode: balanced, num_samples: 2}", "{mode: turbo, num_samples: 2, colour: red}")
            .replace("{category: tops, seed: 1}", "{category: hats, num_samples: 0}")
            .replace("{category: bottoms}", "{num_samples: 5, model_image: x.jpg}")
            .replace("{seed: 7}", "{seed: -1}"))
    problems = await problems_of(write(folder / "inputs.yaml", text))
    mode = find(problems, "inputs.mode")
    assert mode.value == "'turbo'" and "'performance', 'balanced' or 'quality'" in mode.message
    assert "not an input of tryon-v1.6" in find(problems, "inputs.colour").message
    assert find(problems, "garments[0].inputs.category").value == "'hats'"
    zero = find(problems, "garments[0].inputs.num_samples")
    assert zero.value == "0" and "greater than or equal to 1" in zero.message
    five = find(problems, "garments[1].inputs.num_samples")
    assert five.value == "5" and "less than or equal to 4" in five.message
    assert "images come from" in find(problems, "garments[1].inputs.model_image").message
    assert find(problems, "models[1].inputs.seed").value == "-1"
    assert len(problems) == 7


async def test_every_problem_at_once_in_one_message(folder):
    (folder / "garments" / "notes.jpg").write_text("not a picture")
    text = """
name: fw26
model_name: tryon-v1.6
inputs: {mode: turbo}
models: [{id: ava, image: models/ava.jpg}, {id: a/b, image: models/missing.jpg}]
garments:
  - {id: jacket-01, image: garments/notes.jpg, inputs: {num_samples: 0}}
  - {id: jacket-01, image: garments/jeans-02.png, inputs: {num_samples: 5}}
  - {id: "", image: garments/jeans-02.png}
pairs: [{garment: jacket-01, model: zoe}]
"""
    with pytest.raises(SpecError) as caught:
        await validate_spec(await load_spec(write(folder / "all.yaml", text)))
    message = str(caught.value)
    lines = message.splitlines()
    assert lines[0].endswith("9 problems; nothing was submitted")
    assert len(lines) == 10
    expected = ["inputs.mode: 'turbo'", "models[1].id: 'a/b'", "garments[0].inputs.num_samples: 0",
                "garments[1].id: 'jacket-01' is a duplicate", "garments[1].inputs.num_samples: 5",
                "garments[2].id: ''", "pairs[0].model: 'zoe'", "garments[0].image: 'garments/notes.jpg'",
                "models[1].image: 'models/missing.jpg' not found"]
    for text in expected:
        assert sum(line.startswith(text) for line in lines[1:]) == 1, (text, message)


async def test_empty_lists(folder):
    problems = await problems_of(write(folder / "empty.yaml", "name: fw26\nmodels: []\ngarments: []\n"))
    assert {p.location for p in problems} == {"models", "garments"}


async def test_wrong_shapes(folder):
    problems = await problems_of(write(folder / "shape.yaml", """
name: fw26
inputs: [mode, quality]
models: {id: ava}
garments: [jacket-01, {id: jeans-02, image: garments/jeans-02.png, inputs: 3}]
"""))
    locations = {p.location for p in problems}
    assert {"inputs", "models", "garments[0]", "garments[1].inputs"} <= locations


# -- CSV specs ------------------------------------------------------------------------------------

CSV_HEADER = "garment_id,garment_image,model_id,model_image,category,mode,num_samples,seed\n"


async def test_csv_spec(folder):
    path = write(folder / "FW26 pairs.csv", CSV_HEADER
                 + "jacket-01,garments/jacket-01.png,ava,models/ava.jpg,tops,quality,2,\n"
                 + "jeans-02,garments/jeans-02.png,ava,models/ava.jpg,bottoms,,,123\n")
    spec = await load_spec(path)
    assert spec.name == "FW26-pairs"  # from the file name, made safe
    await validate_spec(spec)
    first, second = list(iter_items(spec))
    assert first.inputs == {"category": "tops", "mode": "quality", "num_samples": 2,
                            "model_image": "models/ava.jpg", "garment_image": "garments/jacket-01.png"}
    assert second.inputs["seed"] == 123 and "mode" not in second.inputs  # empty cells are not set
    assert spec.item_count() == 2


async def test_malformed_csv_names_the_row(folder):
    path = write(folder / "bad.csv", CSV_HEADER
                 + "jacket-01,garments/jacket-01.png,ava,models/ava.jpg,,,,\n"
                 + "jeans-02,garments/jeans-02.png,ava\n"
                 + 'jeans-02,"garments/jeans-02.png,bea,models/bea.png,,,,\n')
    problems = await problems_of(path)
    assert "has 3 fields; the header has 8" in find(problems, "row 3").message
    assert "not valid CSV" in find(problems, "row 4").message


async def test_csv_missing_columns(folder):
    problems = await problems_of(write(folder / "cols.csv", "garment_id,garment_image,model\nx,y,z\n"))
    assert {p.location for p in problems} == {"row 1.model_id", "row 1.model_image"}


async def test_csv_problems_all_at_once(folder):
    path = write(folder / "rows.csv", "garment_id,garment_image,model_id,model_image,mode,num_samples,colour\n"
                 + "jacket-01,garments/jacket-01.png,ava,models/ava.jpg,turbo,0,\n"
                 + "../x,garments/jeans-02.png,ava,models/ava.jpg,,5,\n"
                 + "jacket-01,garments/jeans-02.png,a/b,models/gone.png,,,\n"
                 + "jacket-01,garments/jacket-01.png,ava,models/ava.jpg,,,\n"
                 + ",garments/jacket-01.png,ava,,,,\n")
    problems = await problems_of(path)
    assert "not a known column" in find(problems, "row 1.colour").message
    assert find(problems, "row 2.mode").value == "'turbo'"
    assert find(problems, "row 2.num_samples").value == "'0'"
    assert find(problems, "row 3.garment_id").value == "'../x'"
    assert find(problems, "row 3.num_samples").value == "'5'"
    assert "differs from the image of garment 'jacket-01' on row 2" in find(problems, "row 4.garment_image").message
    assert find(problems, "row 4.model_id").value == "'a/b'"
    assert "listed twice (first on row 2)" in find(problems, "row 5").message
    assert "is empty" in find(problems, "row 6.garment_id").message
    assert "is empty" in find(problems, "row 6.model_image").message
    assert "not found" in find(problems, "row 4.model_image").message


async def test_csv_is_streamed_not_loaded_whole(folder):
    """The first item comes out before the reader reaches a broken row at the end of the file."""
    rows = "".join(f"g{i},garments/jacket-01.png,ava,models/ava.jpg,,,,\n" for i in range(2000))
    path = write(folder / "big.csv", CSV_HEADER + rows + 'broken,"unterminated\n')
    spec = await load_spec(path)
    items = iter_items(spec)
    assert next(items).label == "g0__ava"
    with pytest.raises(SpecError) as caught:
        await validate_spec(spec)
    assert [p.where for p in caught.value.problems] == ["row 2002"]
    with pytest.raises(SpecError):
        for _ in items:
            pass


# -- item keys ------------------------------------------------------------------------------------

async def keys_of(path, **kwargs) -> dict[str, str]:
    spec = await load_spec(path, **kwargs)
    return {item.label: await item_key(item) for item in iter_items(spec)}


async def test_item_keys_are_stable_across_runs(folder):
    path = write(folder / "fw26.yaml", GOOD_YAML)
    first = await keys_of(path)
    images._identity_cache.clear()  # hashed again, not remembered
    assert await keys_of(path) == first
    assert len(set(first.values())) == 4
    # The key is the documented formula: a restart (or another machine) computes the same.
    item = next(iter_items(await load_spec(path)))
    inputs = dict(INPUT_SCHEMAS["tryon-v1.6"](
        **{**item.inputs,
           "model_image": "sha256:" + hashlib.sha256((folder / "models/ava.jpg").read_bytes()).hexdigest(),
           "garment_image": "sha256:" + hashlib.sha256((folder / "garments/jacket-01.png").read_bytes()).hexdigest()},
    ).model_dump(mode="json"))
    canonical = json.dumps({"v": 1, "model_name": "tryon-v1.6", "inputs": inputs}, sort_keys=True, separators=(",", ":"))
    assert first["jacket-01__ava"] == hashlib.sha256(canonical.encode()).hexdigest()


async def test_item_key_changes_with_an_input(folder):
    before = await keys_of(write(folder / "fw26.yaml", GOOD_YAML))
    after = await keys_of(write(folder / "fw26.yaml", GOOD_YAML.replace("mode: balanced", "mode: quality")))
    assert all(before[label] != after[label] for label in before)
    override = await keys_of(str(folder / "fw26.yaml"), model_name_override="tryon-v1.5")
    assert all(after[label] != override[label] for label in after)


async def test_item_key_changes_with_image_content(folder):
    path = write(folder / "fw26.yaml", GOOD_YAML)
    before = await keys_of(path)
    write_image(folder / "garments" / "jacket-01.png", color="yellow")
    after = await keys_of(path)
    assert after["jacket-01__ava"] != before["jacket-01__ava"]
    assert after["jeans-02__ava"] == before["jeans-02__ava"]


async def test_item_key_ignores_defaults_spelled_out_and_file_location(folder):
    before = await keys_of(write(folder / "fw26.yaml", GOOD_YAML))
    (folder / "elsewhere").mkdir()
    (folder / "elsewhere" / "j.png").write_bytes((folder / "garments" / "jacket-01.png").read_bytes())
    text = (GOOD_YAML.replace("{mode: balanced, num_samples: 2}", "{num_samples: 2, output_format: png, seed: 42}")
            .replace("garments/jacket-01.png", "elsewhere/j.png"))
    assert await keys_of(write(folder / "moved.yaml", text)) == before


def url_item(collection: str, garment_id: str, url: str, **inputs) -> Item:
    return Item(collection=collection, model_name="tryon-v1.6", garment_id=garment_id, model_id="ava",
                inputs={"garment_image": url, "model_image": "https://cdn.example/ava.jpg", **inputs})


async def test_item_key_same_url_same_key():
    a = await item_key(url_item("c1", "g1", "https://cdn.example/j.jpg"))
    b = await item_key(url_item("c2", "other", "https://cdn.example/j.jpg"))
    c = await item_key(url_item("c1", "g1", "https://cdn.example/k.jpg"))
    d = await item_key(url_item("c1", "g1", "https://cdn.example/j.jpg", num_samples="1"))  # typed: same as default
    assert a == b == d != c


async def test_spec_built_in_code():
    spec = CollectionSpec(name="code", garments=[Garment(id="g", image="https://cdn.example/g.jpg")],
                          models=[ModelPhoto(id="m", image="saved:m")], pairs=[Pair(garment="g", model="m")])
    await validate_spec(spec)
    [item] = iter_items(spec)
    assert item.label == "g__m" and item.inputs["model_image"] == "saved:m"


# -- one spec, different model families ------------------------------------------------------------

async def family_problems(tmp_path, **kwargs) -> list[str]:
    from tests.collections import write_collection

    spec = await load_spec(write_collection(tmp_path, **kwargs))
    with pytest.raises(SpecError) as caught:
        await validate_spec(spec)
    return [str(p) for p in caught.value.problems]


async def test_a_v16_spec_is_refused_for_tryon_max_naming_each_row_and_field(tmp_path):
    problems = await family_problems(tmp_path, model_name="tryon-max", inputs={"mode": "quality", "num_samples": 2},
                                 garment_inputs={"g0": {"category": "tops"}, "g1": {"segmentation_free": False}})
    assert any(p.startswith("inputs.mode: is not an input of tryon-max") for p in problems)
    assert any(p.startswith("inputs.num_samples: is not an input of tryon-max") for p in problems)
    assert any(p.startswith("garments[0].inputs.category: is not an input of tryon-max") for p in problems)
    assert any(p.startswith("garments[1].inputs.segmentation_free: is not an input of tryon-max") for p in problems)


async def test_a_tryon_max_spec_is_refused_for_v16_naming_each_row_and_field(tmp_path):
    problems = await family_problems(tmp_path, model_name="tryon-v1.6", inputs={"resolution": "4k"},
                                 garment_inputs={"g1": {"generation_mode": "fast"}})
    assert any(p.startswith("inputs.resolution: is not an input of tryon-v1.6") for p in problems)
    assert any(p.startswith("garments[1].inputs.generation_mode: is not an input of tryon-v1.6") for p in problems)


async def test_garments_alone_only_for_a_model_that_makes_the_person(tmp_path):
    problems = await family_problems(tmp_path / "max", model_name="tryon-max", inputs={"seed": 1}, models=0)
    assert any(p.startswith("models: is empty") for p in problems)
    from tests.collections import write_collection

    spec = await load_spec(write_collection(tmp_path / "p2m", model_name="product-to-model", inputs={"seed": 1}, models=0))
    await validate_spec(spec)
    items = list(iter_items(spec))
    assert [i.label for i in items] == ["g0__generated", "g1__generated"]
    assert all(set(i.inputs) == {"product_image", "seed"} for i in items)


async def test_product_to_model_with_models_refuses_an_image_prompt(tmp_path):
    problems = await family_problems(tmp_path, model_name="product-to-model", inputs={"image_prompt": "https://x/i.jpg", "seed": 1})
    assert any(p.startswith("inputs: is invalid: image_prompt cannot be combined with model_image") for p in problems)


async def test_re_rendering_with_another_model_keeps_only_the_inputs_it_knows(tmp_path):
    from tests.collections import write_collection

    path = write_collection(tmp_path, inputs={"mode": "quality", "seed": 7, "output_format": "jpeg"},
                            garment_inputs={"g0": {"category": "tops"}})
    spec = await load_spec(path, model_name_override="tryon-max")
    await validate_spec(spec)
    item = next(iter_items(spec))
    assert item.model_name == "tryon-max"
    assert {k: v for k, v in item.inputs.items() if not k.endswith("_image")} == {"seed": 7, "output_format": "jpeg"}
    assert set(item.inputs) >= {"product_image", "model_image"}
