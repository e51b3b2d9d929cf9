"""``python -m pipeline.params_schema`` (``make schema``): write ``params.schema.json``, the JSON Schema of a params
file (params.yaml and profiles/*.yaml), generated from the config classes of :mod:`pipeline.config`, so an editor
flags an unknown key, a wrong type or a misspelt name while the file is edited.

Every params file's first line, ``# yaml-language-server: $schema=params.schema.json``, points editors at the
schema (profiles/params.schema.json is a symbolic link to it, so the same line works in profiles/, and params.yaml
stays a byte copy of its profile). tests/test_params_schema.py checks that the committed schema is current and that
every params file passes it. The schema follows :func:`pipeline.config.schema.parse` type by type: every key of
every section, required unless it has a default, no unknown keys, ``null`` only where the type allows it. It adds
the restrictions on names and choices that the sections' ``check`` methods enforce (:data:`RULES`). Value ranges
and rules that span keys stay with the loader; the schema's description lists them.

NOTE: not pydantic's ``TypeAdapter``. pydantic reaches this project only through DVC (it is no declared
dependency), its output would need the same rework (it allows unknown keys in plain dataclasses and titles every
field), and walking the type hints the way ``parse`` does keeps the schema's reading of a type the loader's own.
This module lives outside pipeline/config on purpose: that folder is a dependency of every stage in dvc.yaml.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import re
import sys
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

from pipeline import cli, config
from pipeline.config import sections
from pipeline.config.determinism import GPU_KERNELS
from pipeline.outputs import json_bytes, write_outputs

__all__ = ["RULES", "SCHEMA_FILE", "generate", "main", "schema_bytes"]

SCHEMA_FILE = Path("params.schema.json")  # at the repository root; profiles/params.schema.json links to it
COMMAND = "python -m pipeline.params_schema (make schema)"

_NAME = {"type": "string", "pattern": f"^{config.NAME_PATTERN.pattern}$"}  # schema.check_name
# sections.registered: the loader's own expression. NOTE: a private name, read so the two cannot drift apart.
_MODEL = {"type": "string", "pattern": f"^{sections._MODEL_NAME.pattern}$"}
_NAMES = {"items": _NAME, "minItems": 1, "uniqueItems": True}  # schema.names_in
# sections.check_options: a variant's (or a reading's) options, qkv_* keys with plain values
_OPTIONS = {
    "type": "object",
    "propertyNames": {"pattern": "^qkv_"},
    "additionalProperties": {"type": ["boolean", "number", "string"]},
}
_OVERRIDE = {
    "type": "object",
    "properties": {"profile": {}, "rehearsal": {}},
    "required": ["profile", "rehearsal"],
    "additionalProperties": False,
}

# What a section's `check` restricts beyond the field's type, by "Class.field": merged into the field's schema.
# Each is enforced by the loader (tests/test_params_schema.py mutates a params file against every entry).
RULES: dict[str, dict[str, Any]] = {
    "Params.profile": {"pattern": _NAME["pattern"]},
    "Params.variants": {"propertyNames": _NAME, "additionalProperties": _OPTIONS},
    "Params.datasets": {"propertyNames": _NAME},
    "Params.backbones": {"propertyNames": _NAME, "minProperties": 1},
    "Params.device": {"enum": ["cpu", "cuda"]},
    "Params.seeds": {"items": {"type": "integer", "minimum": 0}, "minItems": 1, "uniqueItems": True},
    "Flops.models": {"items": _MODEL},
    "Flops.variants": _NAMES,
    "Forensics.model": {"pattern": _MODEL["pattern"]},
    "Forensics.readings": {"additionalProperties": _OPTIONS},
    "Bench.variants": _NAMES,
    "Pretrain.variants": _NAMES,
    "Finetune.variants": _NAMES,
    "Finetune.datasets": _NAMES,
    "Dataset.source": {"enum": list(config.SOURCES)},
    "Model.name": {"pattern": _MODEL["pattern"]},
    "Model.patch_size": {"enum": [4, 8, 16]},
    "Augment.mode": {"enum": ["batched", "timm"]},
    "Augment.re_mode": {"enum": ["const", "rand", "pixel"]},
    "Augment.interpolation": {"enum": ["bicubic", "bilinear", "nearest"]},
    "Recipe.weights": {"enum": ["raw", "ema"]},
    "Runtime.gpu_kernels": {"enum": list(GPU_KERNELS)},
    "Resources.nodes": {"enum": [1]},
    "Rehearsal.of": {"pattern": _NAME["pattern"]},
    "Rehearsal.overrides": {"additionalProperties": _OVERRIDE},
}

DESCRIPTION = """\
A params file of this project (params.yaml, profiles/*.yaml) as pipeline/config loads it: every section and key, \
its type, the names and choices the loader restricts, the keys it requires; unknown keys are errors. YAML anchors \
and aliases are resolved before any check. Checked by the loader only (python -m pipeline.config params.yaml, the \
first line of every stage's command): value ranges (positive counts, fractions, tolerances); rules across keys and \
sections (a listed variant, dataset or backbone must be an entry; a fine-tuned variant must be pretrained; each \
dataset source's own keys; warmup below epochs; 'ema' weights need ema_decay; image sizes that the patches tile; \
distinct backbones); the launcher's form; which keys a rehearsal may override; what the qkv library accepts as a \
variant's options; a key given twice. The loader reads YAML 1.1 (PyYAML), an editor YAML 1.2: this schema passes \
1e-3 for a number (a string to the loader: write 1.0e-3) and 3.0 for an integer, which the loader refuses, and \
yes/no/on/off are booleans to the loader but strings here: write true/false. Generated by \
python -m pipeline.params_schema (make schema) from the config classes; do not edit."""


def generate() -> dict[str, Any]:
    """The JSON Schema (draft-07) of a params file: :class:`pipeline.config.Params` without its ``path``."""
    schema = _dataclass(config.Params, skip=("path",))
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "params.yaml",
        **schema,
        "description": DESCRIPTION,
    }


def schema_bytes() -> bytes:
    """The schema file's text: sorted keys, two-space indent, trailing newline (:func:`pipeline.outputs.json_bytes`)."""
    return json_bytes(generate())


def _type(tp: Any) -> dict[str, Any]:
    """The schema of the type hint ``tp``, case by case as :func:`pipeline.config.schema.parse` reads it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return {}
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [{"type": "null"} if a is type(None) else _type(a) for a in args]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (tuple, list) or tp in (tuple, list):  # parse: every item of the first argument's type
        return {"type": "array", "items": _type(args[0] if args else Any)}
    if origin is dict or tp is dict:  # YAML keys a JSON document can hold: strings
        return {"type": "object", "additionalProperties": _type(args[1] if args else Any)}
    simple = {float: "number", int: "integer", str: "string", bool: "boolean"}
    if tp in simple:
        return {"type": simple[tp]}
    raise TypeError(f"unsupported type hint {tp!r}: add it to pipeline.config.schema.parse and here")


def _dataclass(cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object with exactly the fields ``parse`` accepts: required unless they have a default, nothing else."""
    hints = typing.get_type_hints(cls)
    notes = field_comments(cls)
    properties, required = {}, []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        node = {**_type(hints[f.name]), **RULES.get(f"{cls.__name__}.{f.name}", {})}
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
        elif isinstance(f.default, (bool, int, float, str, type(None))):
            node["default"] = f.default
        note = "\n\n".join(filter(None, [notes.get(f.name), node.pop("description", None)]))
        properties[f.name] = {**node, **({"description": note} if note else {})}
    out = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    doc = class_doc(cls)
    return {**out, "description": doc} if doc else out


def _plain(text: str) -> str:
    """reST to plain text with Markdown literals, paragraphs kept, lines within them joined."""
    text = re.sub(r"(?::\w+:)?``?([^`]+)``?", r"`\1`", text)
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n"))


def class_doc(cls: type) -> str:
    """The class's own docstring ('' for the signature a dataclass without one is given)."""
    doc = cls.__dict__.get("__doc__") or ""
    return "" if doc.startswith(f"{cls.__name__}(") else _plain(doc)


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class source: the comment lines just above it and the one at its end."""
    source = inspect.getsource(cls)
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        at_end = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        text = " ".join([*above, *at_end])
        if text:
            out[node.target.id] = _plain(text)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("python -m pipeline.params_schema", __doc__, {})
    parser.add_argument("--output", type=Path, default=SCHEMA_FILE, help="the schema file to write")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the file differs from a fresh generation"
    )
    args = parser.parse_args(argv)
    cli.run_stage("schema", lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    text = schema_bytes()
    if not args.check:
        write_outputs({args.output: text})
        print(f"schema: wrote {args.output}")
    elif not args.output.is_file() or args.output.read_bytes() != text:
        sys.exit(f"schema: error: {args.output} is not the schema the config classes give; run {COMMAND}")


if __name__ == "__main__":
    main()
