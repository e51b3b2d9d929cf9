"""Load sections of ``params.yaml`` into frozen dataclasses, rejecting unknown keys and wrong types.

Every stage names the sections it reads in its ``PARAMS`` tuple (the same list as its ``params:`` in
``dvc.yaml``) and turns each into a typed, immutable config here, so a typo or a wrong type fails at load time
with the key's full dotted name instead of deep inside a run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ParamsError", "load_sections", "parse", "profile_name", "variant_options"]


class ParamsError(ValueError):
    """A params file, section or value that is missing, unknown or of the wrong type."""


def load_sections(path: str | Path, sections: tuple[str, ...]) -> dict[str, Any]:
    """The raw values of ``sections`` from the YAML file at ``path``; every section must be present."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    missing = [s for s in sections if s not in data]
    if missing:
        raise ParamsError(f"{path}: missing section(s) {', '.join(missing)}")
    return {s: data[s] for s in sections}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def parse(tp, value: Any, where: str):
    """Check ``value`` against the type hint ``tp`` and convert it (lists to tuples, dicts to dataclasses)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ParamsError(f"{where}: unknown key(s) {', '.join(unknown)}; expected: {', '.join(names)}")
        required = [
            f.name
            for f in dataclasses.fields(tp)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [n for n in required if n not in value]
        if missing:
            raise ParamsError(f"{where}: missing key(s) {', '.join(missing)}")
        return tp(**{k: parse(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse(arg, value, where)
            except ParamsError as exc:
                errors.append(str(exc))
        raise ParamsError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ParamsError(f"{where}: {value!r} is not one of: {', '.join(map(str, args))}")
        return value
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(parse(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        key_t, val_t = args if args else (Any, Any)
        return {parse(key_t, k, f"{where} key"): parse(val_t, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        # YAML reads "1e-3" (no dot) as a string: say so rather than failing obscurely.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = " (write floats with a dot, e.g. 1.0e-3)" if isinstance(value, str) else ""
            raise ParamsError(f"{where}: expected a number, got {value!r}{hint}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ParamsError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported type hint {tp!r}")


def profile_name(value: Any) -> str:
    """The ``profile`` entry: the name every result file carries, so results of two profiles never mix."""
    if not isinstance(value, str) or not value.strip():
        raise ParamsError(f"profile: expected a non-empty name, got {value!r}")
    return value


def variant_options(variants: dict[str, Any], name: str, where: str = "variants") -> dict[str, Any]:
    """The ``qkv_*`` model options of variant ``name``, validated by building their embedding config."""
    from qkv.xcit import split_model_options

    if name not in variants:
        raise ParamsError(f"{where}: unknown variant {name!r}; known: {', '.join(variants)}")
    options = variants[name]
    if not isinstance(options, dict):
        raise ParamsError(f"{where}.{name}: expected a mapping of qkv_* options, got {options!r}")
    try:
        split_model_options(options)
    except ValueError as exc:
        raise ParamsError(f"{where}.{name}: {exc}") from None
    return dict(options)
