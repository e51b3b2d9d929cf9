"""params.schema.json (pipeline/params_schema.py): committed and current, passed by every params file, referenced by
each file's first line, and failed by a file the loader refuses for the reasons the schema can see. Every rule the
schema adds to the types is enforced by the loader too (the schema is never stricter than the loader).

The validator is the small one below (jsonschema is not installed in this project's environment): it implements
exactly the keywords the schema uses, and a test fails if the schema starts using another."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline import config, params_schema
from pipeline.config import ParamsError, read_yaml
from pipeline.review import rehearsal

from .tiny import ROOT

SCHEMA = ROOT / "params.schema.json"
PARAMS_FILES = [ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("*.yaml"))]
MODELINE = "# yaml-language-server: $schema=params.schema.json\n"

# ----------------------------------------------------------------------------------------------------
# A JSON Schema (draft-07) validator for the keywords the schema uses; annotations are skipped.

ANNOTATIONS = {"$schema", "title", "description", "default"}
TYPES = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: not isinstance(v, bool) and (isinstance(v, int) or isinstance(v, float) and v.is_integer()),
    "number": lambda v: not isinstance(v, bool) and isinstance(v, (int, float)),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _equal(a, b) -> bool:
    """JSON equality: 1 equals 1.0, true equals no number."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_equal, a, b))
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def errors(schema: dict, value, where: str = "") -> list[str]:
    """Every way ``value`` fails ``schema``, each naming the dotted key."""
    kinds = schema.get("type", [])
    if kinds and not any(TYPES[k](value) for k in (kinds if isinstance(kinds, list) else [kinds])):
        return [f"{where}: {value!r} is not of type {kinds}"]
    out = []
    if "enum" in schema and not any(_equal(value, e) for e in schema["enum"]):
        out.append(f"{where}: {value!r} is not one of {schema['enum']}")
    failed = [errors(s, value, where) for s in schema.get("anyOf", [])]
    if failed and all(failed):  # say how each alternative fails
        out += [f"{where}: matches none of the alternatives", *(e for found in failed for e in found)]
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        out.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if "minimum" in schema and TYPES["number"](value) and value < schema["minimum"]:
        out.append(f"{where}: {value!r} is below {schema['minimum']}")
    if isinstance(value, list):
        out += [e for i, v in enumerate(value) for e in errors(schema.get("items", {}), v, f"{where}[{i}]")]
        if len(value) < schema.get("minItems", 0):
            out.append(f"{where}: fewer than {schema['minItems']} items")
        if schema.get("uniqueItems") and any(_equal(a, b) for i, a in enumerate(value) for b in value[i + 1 :]):
            out.append(f"{where}: items not unique")
    if isinstance(value, dict):
        out += _object_errors(schema, value, where)
    return out


def _object_errors(schema: dict, value: dict, where: str) -> list[str]:
    out = [f"{where}: missing key {k}" for k in schema.get("required", []) if k not in value]
    if len(value) < schema.get("minProperties", 0):
        out.append(f"{where}: fewer than {schema['minProperties']} keys")
    for key, item in value.items():
        at = f"{where}.{key}" if where else str(key)
        out += errors(schema.get("propertyNames", {}), key, f"{at} (the key)")
        if key in schema.get("properties", {}):
            out += errors(schema["properties"][key], item, at)
        elif schema.get("additionalProperties") is False:
            out.append(f"{at}: unknown key")
        else:
            out += errors(schema.get("additionalProperties", {}), item, at)
    return out


KNOWN = ANNOTATIONS | {"type", "enum", "anyOf", "pattern", "minimum", "items", "minItems", "uniqueItems"}
KNOWN |= {"properties", "required", "additionalProperties", "propertyNames", "minProperties"}


def keywords(schema: dict) -> set[str]:
    """The keywords used anywhere in ``schema`` (not the key names under ``properties``)."""
    found = set(schema)
    for key, sub in schema.items():
        if key == "properties":
            sub = list(sub.values())
        for inner in sub if isinstance(sub, list) else [sub]:
            found |= keywords(inner) if isinstance(inner, dict) else set()
    return found


# ----------------------------------------------------------------------------------------------------


def schema() -> dict:
    return json.loads(SCHEMA.read_text())


def test_the_committed_schema_is_current():
    assert SCHEMA.read_bytes() == params_schema.schema_bytes(), (
        "params.schema.json is not what the config classes give: regenerate it with `make schema` "
        "(python -m pipeline.params_schema) and commit it"
    )
    link = ROOT / "profiles" / "params.schema.json"
    assert link.is_symlink() and link.resolve() == SCHEMA.resolve(), "profiles/params.schema.json links to it"


def test_the_validator_knows_every_keyword_the_schema_uses():
    assert keywords(schema()) <= KNOWN, f"teach errors() {sorted(keywords(schema()) - KNOWN)}"


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_params_file_passes_and_names_the_schema_on_its_first_line(path):
    assert errors(schema(), read_yaml(path)) == []
    assert path.read_text().startswith(MODELINE), f"{path.name}: first line {MODELINE!r}"
    assert (path.parent / "params.schema.json").resolve() == SCHEMA.resolve(), "the modeline resolves beside it"


@pytest.mark.parametrize("name", ["cifar", "paper"])
def test_a_rehearsals_params_pass(name):
    """The params whose rehearsal section is set: a GPU profile rehearsed on this CPU (make rehearse)."""
    profile = read_yaml(ROOT / "profiles" / f"{name}.yaml")
    params, overrides = rehearsal.derive(profile, {n: Path("/stand-ins") / n for n in profile["datasets"]}, {}, 2)
    assert overrides and errors(schema(), json.loads(json.dumps(params))) == []


def data() -> dict:
    """The committed params as the loader reads them, aliases undone (pretrain and finetune share `augment`)."""
    return json.loads(json.dumps(read_yaml(ROOT / "params.yaml")))


def mutated(key: str, value) -> dict:
    """The committed params with dotted ``key`` set to ``value`` (``DELETE``: removed)."""
    out = data()
    *parents, last = key.split(".")
    node = out
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


DELETE = object()
# (what, dotted key, value, the schema's message): the loader refuses each one too
CASES = [
    ("unknown section", "benchmark", {}, "benchmark: unknown key"),
    ("unknown key", "pretrain.recipe.augment.hflipp", 0.5, "pretrain.recipe.augment.hflipp: unknown key"),
    ("missing section", "audit", DELETE, ": missing key audit"),
    ("missing key", "runtime.threads", DELETE, "runtime: missing key threads"),
    ("wrong type", "pretrain.recipe.epochs", "3", "pretrain.recipe.epochs: '3' is not of type integer"),
    ("bool for int", "bench.rounds", True, "bench.rounds: True is not of type integer"),
    ("float as string", "pretrain.recipe.lr", "1e-3", "pretrain.recipe.lr: '1e-3' is not of type number"),
    ("null not allowed", "report.confidence", None, "report.confidence: None is not of type number"),
    ("list for scalar", "profile", ["embedded"], "profile: ['embedded'] is not of type string"),
    ("Literal", "cluster.executor", "pbs", "cluster.executor: 'pbs' is not one of"),
    ("Params.profile", "profile", "my-profile", "profile: 'my-profile' does not match"),
    ("Params.variants", "variants.lin-ear", {"qkv_embed": "linear"}, "variants.lin-ear (the key): 'lin-ear' does"),
    ("Params.variants", "variants.linear.embed", "linear", "variants.linear.embed (the key): 'embed' does not"),
    ("Params.variants", "variants.linear.qkv_bias", [True], "variants.linear.qkv_bias: [True] is not of type"),
    ("Params.datasets", "datasets.mnist 5k", data()["datasets"]["mnist5k"], "datasets.mnist 5k (the key)"),
    ("Params.backbones", "backbones", {}, "backbones: fewer than 1 keys"),
    ("Params.device", "device", "gpu", "device: 'gpu' is not one of"),
    ("Params.seeds", "seeds", [0, 0], "seeds: items not unique"),
    ("Params.seeds", "seeds", [-1], "seeds[0]: -1 is below 0"),
    ("Flops.models", "flops.models", ["xcit_nano_12_p8"], "flops.models[0]: 'xcit_nano_12_p8' does not match"),
    ("Flops.variants", "flops.variants", [], "flops.variants: fewer than 1 items"),
    ("Forensics.model", "forensics.model", "qkv_xcit_huge_12_p8", "forensics.model: 'qkv_xcit_huge_12_p8' does"),
    ("Forensics.readings", "forensics.readings.extra", {"hidden": 2}, "forensics.readings.extra.hidden (the key)"),
    ("Bench.variants", "bench.variants", ["linear", "linear"], "bench.variants: items not unique"),
    ("Pretrain.variants", "pretrain.variants", ["linear", "s;ne"], "pretrain.variants[1]: 's;ne' does not match"),
    ("Finetune.variants", "finetune.variants", [], "finetune.variants: fewer than 1 items"),
    ("Finetune.datasets", "finetune.datasets", ["digits", "digits"], "finetune.datasets: items not unique"),
    ("Dataset.source", "datasets.digits.source", "svhn", "datasets.digits.source: 'svhn' is not one of"),
    ("Model.name", "backbones.n12.name", "qkv_xcit_nano_12_p4", "backbones.n12.name: 'qkv_xcit_nano_12_p4' does"),
    ("Model.patch_size", "backbones.n12.patch_size", 2, "backbones.n12.patch_size: 2 is not one of"),
    ("Augment.mode", "pretrain.recipe.augment.mode", "gpu", "pretrain.recipe.augment.mode: 'gpu' is not one of"),
    ("Augment.re_mode", "pretrain.recipe.augment.re_mode", "zero", "augment.re_mode: 'zero' is not one of"),
    ("Augment.interpolation", "finetune.recipe.augment.interpolation", "area", "interpolation: 'area' is not one"),
    ("Recipe.weights", "finetune.recipe.weights", "best", "finetune.recipe.weights: 'best' is not one of"),
    ("Runtime.gpu_kernels", "runtime.gpu_kernels", "tf32", "runtime.gpu_kernels: 'tf32' is not one of"),
    ("Resources.nodes", "cluster.training.nodes", 2, "cluster.training.nodes: 2 is not one of"),
    ("Rehearsal.of", "rehearsal", {"of": "pa-per", "overrides": {}}, "rehearsal.of: 'pa-per' does not match"),
    ("Rehearsal.overrides", "rehearsal", {"of": "paper", "overrides": {"seeds": {"profile": [0]}}}, "missing key"),
]


@pytest.mark.parametrize(("what", "key", "value", "message"), CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_a_mutated_file_fails_the_schema_and_the_loader(what, key, value, message):
    found = errors(schema(), mutated(key, value))
    assert any(message in e for e in found), found
    with pytest.raises(ParamsError):
        config.from_data(mutated(key, value), "params.yaml")


def test_every_rule_the_schema_adds_has_a_case():
    assert set(params_schema.RULES) <= {c[0] for c in CASES}


# Where an instance of each class sits in the committed params (to try every choice a rule allows).
AT = {"Params": "", "Dataset": "datasets.mnist5k", "Model": "backbones.n12", "Augment": "pretrain.recipe.augment"}
AT |= {"Recipe": "finetune.recipe", "Runtime": "runtime", "Resources": "cluster.training"}


@pytest.mark.parametrize("rule", [r for r in params_schema.RULES if "enum" in params_schema.RULES[r]])
def test_every_choice_the_schema_allows_the_loader_allows(rule):
    """Never stricter than the loader: each value of an enum is accepted, or refused for another key's sake."""
    cls, field = rule.split(".")
    key = ".".join(filter(None, [AT[cls], field]))
    for value in params_schema.RULES[rule]["enum"]:
        try:
            config.from_data(mutated(key, value), "params.yaml")
        except ParamsError as exc:  # e.g. weights: 'ema' needs an ema_decay; not "'ema' is not one of"
            assert not re.search(rf"{re.escape(key)}: ({re.escape(repr(value))} is not one of|unknown)", str(exc)), exc


def test_descriptions_come_from_the_classes():
    """A field's comment and a class's docstring reach the schema, where an editor shows them."""
    props = schema()["properties"]
    threads = props["runtime"]["properties"]["threads"]
    assert threads["description"] == "torch CPU threads per process (0: torch's default)"
    assert props["runtime"]["description"].startswith("How the training stages run, never what they compute")
    assert "rules across keys and sections" in schema()["description"], "what only the loader checks is said"
    assert props["rehearsal"]["anyOf"][1] == {"type": "null"} and "rehearsal" in schema()["required"]


def test_the_command_writes_and_checks(tmp_path, capsys):
    out = tmp_path / "schema.json"
    params_schema.main(["--output", str(out)])
    assert out.read_bytes() == SCHEMA.read_bytes() and out.read_bytes().endswith(b"}\n")
    params_schema.main(["--output", str(out), "--check"])
    out.write_text("{}\n")
    with pytest.raises(SystemExit, match="make schema"):
        params_schema.main(["--output", str(out), "--check"])
