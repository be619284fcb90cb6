"""Typed configs: strict keys, types named in errors, optional fields in both spellings."""

from dataclasses import dataclass, field
from typing import Optional

import pytest

from spatialt2i.config import from_dict, load_yaml
from spatialt2i.errors import ConfigError


@dataclass
class Inner:
    k: int = 1


@dataclass
class Outer:
    name: str = "x"
    rate: float = 0.5
    maybe: int | None = None
    maybe_old: Optional[str] = None
    inner: Inner = field(default_factory=Inner)
    weights: dict[int, float] = field(default_factory=dict)


def test_values_are_coerced_and_nested():
    o = from_dict(Outer, {"rate": 1, "maybe": 3, "maybe_old": None, "inner": {"k": 2}, "weights": {2: 1}})
    assert o.rate == 1.0 and isinstance(o.rate, float) and o.maybe == 3 and o.inner.k == 2
    assert from_dict(Outer, {"maybe": None}).maybe is None
    # YAML 1.1 reads 1e-3 (no dot) as a string: a float field still takes it
    assert from_dict(Outer, load_yaml_text("rate: 1e-3")).rate == 0.001
    assert from_dict(Outer, {"rate": " -2.5E+2 "}).rate == -250.0


def load_yaml_text(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


@pytest.mark.parametrize("data, needle", [
    ({"nmae": "y"}, r"unknown key\(s\) \['nmae'\]"),
    ({"inner": {"kk": 1}}, r"cfg.inner: unknown key"),
    ({"rate": "fast"}, r"cfg.rate: expected float"),
    ({"maybe": "three"}, r"cfg.maybe: expected int"),
    ({"inner": 3}, r"cfg.inner: expected a mapping"),
])
def test_errors_name_the_key(data, needle):
    with pytest.raises(ConfigError, match=needle):
        from_dict(Outer, data, "cfg")


def test_presets_and_missing_files(tmp_path):
    assert "scene" in load_yaml("data-world")
    with pytest.raises(ConfigError, match="no such file or preset"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(bad)
