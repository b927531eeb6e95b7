"""Declared parameters: parsing, ranges, and refusal of options a technique does not take."""

import pytest

from apr_core.errors import AprError
from apr_core.params import Param, resolve

RATIO = Param("target_ratio", "float", 0.5, "fraction", min=0, max=1, min_exclusive=True, max_exclusive=True)


@pytest.mark.parametrize("raw,ok", [("0.3", True), ("1.5", False), ("0", False), ("1", False), ("nan", False),
                                    ("abc", False), ("0.999", True)])
def test_float_ranges(raw, ok):
    if ok:
        assert RATIO.parse(raw) == float(raw)
    else:
        with pytest.raises(AprError, match="--target-ratio"):
            RATIO.parse(raw)


def test_error_message_names_range():
    with pytest.raises(AprError) as info:
        RATIO.parse("1.5")
    assert str(info.value) == "--target-ratio must be in (0, 1), got 1.5"


def test_float_lists_and_choices():
    w = Param("weights", "floats", None, min=0)
    assert w.parse("0.85,0.15") == (0.85, 0.15)
    with pytest.raises(AprError):
        w.parse("0.5,-1")
    c = Param("pattern", "choice", "unstructured", choices=("unstructured", "2:4"))
    with pytest.raises(AprError, match="not one of"):
        c.parse("3:4")


def test_resolve_fills_defaults_and_refuses_foreign_flags():
    params = (RATIO, Param("seed", "int", 0))
    assert resolve(params, {}, "prune x") == {"target_ratio": 0.5, "seed": 0}
    with pytest.raises(AprError, match="--drop-rate does not apply to prune x"):
        resolve(params, {"drop_rate": "0.3"}, "prune x")
    with pytest.raises(AprError, match="needs --data"):
        resolve((Param("data", "path", required=True, help="training data"),), {}, "finetune lora")


def test_describe_is_generated_from_the_declaration():
    assert RATIO.describe() == "fraction; range (0, 1); default 0.5."
