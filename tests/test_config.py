"""Typed params loading: unknown keys, wrong types and missing sections are named."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipeline.params import ParamsError, load_sections, parse, variant_options


@dataclass(frozen=True)
class Inner:
    lr: float
    epochs: int
    name: str = "x"
    sizes: tuple[int, ...] = ()
    flag: bool | None = None


def test_parse_converts_and_validates():
    inner = parse(Inner, {"lr": 1, "epochs": 3, "sizes": [1, 2]}, "train")
    assert inner == Inner(lr=1.0, epochs=3, sizes=(1, 2))
    assert isinstance(inner.lr, float)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"lr": 1.0, "epochs": 3, "epoch": 2}, "train: unknown key(s) epoch; expected: lr, epochs, name, sizes, flag"),
        ({"lr": 1.0}, "train: missing key(s) epochs"),
        ({"lr": "1e-3", "epochs": 3}, "train.lr: expected a number, got '1e-3' (write floats with a dot"),
        ({"lr": 1.0, "epochs": 2.5}, "train.epochs: expected an integer, got 2.5"),
        ({"lr": 1.0, "epochs": True}, "train.epochs: expected an integer, got True"),
        ({"lr": 1.0, "epochs": 1, "sizes": 3}, "train.sizes: expected a list, got 3"),
        ({"lr": 1.0, "epochs": 1, "sizes": [1, "a"]}, "train.sizes[1]: expected an integer, got 'a'"),
        ({"lr": 1.0, "epochs": 1, "flag": "no"}, "train.flag: expected bool, got 'no'"),
        ([1, 2], "train: expected a mapping, got [1, 2]"),
    ],
)
def test_parse_errors_name_the_key(value, message):
    with pytest.raises(ParamsError) as excinfo:
        parse(Inner, value, "train")
    assert message in str(excinfo.value)


def test_load_sections_errors(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_sections(tmp_path / "missing.yaml", ("a",))
    path = tmp_path / "params.yaml"
    path.write_text("a: 1\n")
    with pytest.raises(ParamsError, match=r"params.yaml: missing section\(s\) b"):
        load_sections(path, ("a", "b"))
    path.write_text("a: [1\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_sections(path, ("a",))
    path.write_text("- 1\n")
    with pytest.raises(ParamsError, match="expected a mapping of sections"):
        load_sections(path, ("a",))


def test_variant_options():
    variants = {"sne": {"qkv_embed": "sne"}, "bad": {"qkv_embed": "sne", "qkv_shared": "first"}, "odd": 3}
    assert variant_options(variants, "sne") == {"qkv_embed": "sne"}
    with pytest.raises(ParamsError, match="variants: unknown variant 'lin'; known: sne, bad, odd"):
        variant_options(variants, "lin")
    with pytest.raises(ParamsError, match="variants.bad: qkv_shared does not apply to qkv_embed='sne'"):
        variant_options(variants, "bad")
    with pytest.raises(ParamsError, match="variants.odd: expected a mapping of qkv_\\* options"):
        variant_options(variants, "odd")
    with pytest.raises(ParamsError, match="not a qkv_\\* model option: depth"):
        variant_options({"x": {"qkv_embed": "sne", "depth": 3}}, "x")
