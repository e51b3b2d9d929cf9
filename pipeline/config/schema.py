"""Typed parsing of YAML mappings into frozen dataclasses: unknown keys, missing keys and wrong types are named
with the key's full dotted path, so a typo fails at load time instead of deep inside a run.

Generic machinery only; what the sections of ``params.yaml`` hold is in :mod:`.datasets`, :mod:`.sections`
and :mod:`.params`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "NAME_PATTERN",
    "ParamsError",
    "check_name",
    "fraction",
    "names_in",
    "non_negative",
    "parse",
    "positive",
    "read_yaml",
]

# Variant and dataset names become DVC stage names, output paths and command-line words: letters, digits and
# underscores, starting with a letter (no space, quote, dash, slash or shell character).
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


class ParamsError(ValueError):
    """A params file, section or value that is missing, unknown or of the wrong type."""


class _TwiceError(yaml.YAMLError):
    pass


class _UniqueKeys(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently; DVC, which
    reads params.yaml too, refuses it: the project's check would pass a file DVC then fails on). Keys merged in
    with ``<<: *alias`` may be overridden, as YAML allows."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, typing.Hashable):
                    continue  # PyYAML's own error follows
                if key in lines:
                    raise _TwiceError(f"line {line}: key {key!r} given twice in one mapping (first on line "
                                      f"{lines[key]}); keep one")  # fmt: skip
                lines[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, what: str = "params file") -> dict[str, Any]:
    """The mapping at the top of the YAML file ``path`` (a key given twice in a mapping is an error)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: {what} not found")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeys)
    except _TwiceError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def check_name(where: str, value: Any) -> str:
    """``value`` if it is a safe name (:data:`NAME_PATTERN`), else a ParamsError naming ``where``."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ParamsError(
            f"{where}: {value!r} is not a valid name: use letters, digits and underscores, starting with a letter "
            "(it becomes part of DVC stage names, paths and commands)"
        )
    return value


def positive(where: str, **values) -> None:
    """Each ``key=value`` must be above zero."""
    for key, value in values.items():
        if not value > 0:
            raise ParamsError(f"{where}.{key}: expected a positive number, got {value}")


def non_negative(where: str, **values) -> None:
    """Each ``key=value`` must be zero or more."""
    for key, value in values.items():
        if value < 0:
            raise ParamsError(f"{where}.{key}: must not be negative, got {value}")


def fraction(where: str, value: float | None, *, closed: bool = False) -> None:
    """``value`` (unless None) in (0, 1), or with ``closed`` in [0, 1]."""
    if value is not None and not (0 <= value <= 1 if closed else 0 < value < 1):
        raise ParamsError(
            f"{where}: expected a {'probability in [0, 1]' if closed else 'fraction in (0, 1)'}, got {value}"
        )


def names_in(where: str, names: tuple[str, ...], *, known: dict | tuple | None = None, what: str = "") -> None:
    """A non-empty list of distinct safe names, each one of ``known`` (if given)."""
    if not names:
        raise ParamsError(f"{where}: expected at least one entry")
    for i, name in enumerate(names):
        check_name(f"{where}[{i}]", name)
        if known is not None and name not in known:
            raise ParamsError(f"{where}: unknown {what} {name!r}; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ParamsError(f"{where}: {', '.join(sorted({n for n in names if names.count(n) > 1}))} listed twice")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def parse(tp, value: Any, where: str):
    """Check ``value`` against the type hint ``tp`` and convert it (lists to tuples, dicts to dataclasses)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _parse_dataclass(tp, value, where)
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
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            hint = " (write floats with a dot, e.g. 1.0e-3)" if isinstance(value, str) else ""
            raise ParamsError(f"{where}: expected a finite number, got {value!r}{hint}")
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


def _parse_dataclass(tp, value: Any, where: str):
    if not isinstance(value, dict):
        raise ParamsError(f"{where}: expected a mapping, got {value!r}")
    hints = typing.get_type_hints(tp)
    fields = [f for f in dataclasses.fields(tp) if f.init]
    names = [f.name for f in fields]
    unknown = sorted(set(value) - set(names), key=str)
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; expected: {', '.join(names)}")
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in value]
    if missing:
        raise ParamsError(f"{where}: missing key(s) {', '.join(missing)}")
    obj = tp(**{k: parse(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    check = getattr(obj, "check", None)
    if check is not None:
        check(where)  # the section's own range and cross-field rules
    return obj
