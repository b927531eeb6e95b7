"""The referee/candidate codec: exact round trips of plain values, nothing else crosses."""

import collections
import math
import os

import pytest

from apr_eval.sandbox import wire


@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 2 ** 200, -(10 ** 5000), 0.1, -0.0, float("inf"), float("-inf"), 1e-310,
    3 + 4j, "", "héllo\u2603\ud800", b"\x00\xff", bytearray(b"ab"), [1, [2, [3]]], (1, (2,), ()),
    {"a": 1, (1, 2): [3], 4: None}, {1, 2, 3}, frozenset({"x"}), {frozenset({1}): {(1, 2)}},
], ids=lambda v: type(v).__name__)
def test_round_trip_is_exact(value):
    back = wire.decode(wire.encode(value))
    assert back == value and type(back) is type(value)
    if isinstance(value, dict):
        assert list(back) == list(value)  # order kept


def test_nan_round_trips():
    assert math.isnan(wire.decode(wire.encode(float("nan"))))


def test_subclasses_arrive_as_plain_builtins():
    Point = collections.namedtuple("Point", "x y")

    class Loud(str):
        def __eq__(self, other):
            return True

        __hash__ = str.__hash__

    back = wire.decode(wire.encode([Point(1, 2), collections.Counter("aab"), Loud("x"), True]))
    assert back == [(1, 2), {"a": 2, "b": 1}, "x", True]
    assert [type(v) for v in back] == [tuple, dict, str, bool]
    assert back[2] != "y"  # the always-equal str is a plain str now


def test_iterators_are_drained_into_an_iterator():
    back = wire.decode(wire.encode((i * i for i in range(4))))
    assert not isinstance(back, list) and list(back) == [0, 1, 4, 9]
    assert wire.decode(wire.encode(map(abs, [-1, -2]))) != [1, 2]  # an iterator, as a generator would be


@pytest.mark.parametrize("value", [object(), lambda: 1, type, print, range(3), {1: object()}, [[object()]]])
def test_other_objects_cannot_be_sent(value):
    with pytest.raises(wire.Unsendable):
        wire.encode(value)


@pytest.mark.parametrize("data", [
    {"x": 1}, {"i": 5}, {"i": "zz"}, {"f": "nope"}, {"t": "abc"}, {"d": [[1]]}, {"s": [[1]]},
    {"i": "1", "f": "0x1p0"}, 1, 1.5, {"c": ["0x1p0"]},
])
def test_malformed_wire_values_are_refused(data):
    with pytest.raises((ValueError, TypeError)):
        wire.decode(data)


def test_framing_round_trip_and_limits():
    r, w = os.pipe()
    try:
        wire.write_message(w, {"value": wire.encode([1, "two"])})
        assert wire.decode(wire.read_message(r)["value"]) == [1, "two"]
        os.write(w, (wire.MAX_MESSAGE + 1).to_bytes(8, "big"))
        with pytest.raises(ValueError, match="refused"):
            wire.read_message(r)
        os.write(w, (10).to_bytes(8, "big") + b"{}")
        os.close(w)
        w = -1
        with pytest.raises(ValueError, match="ended inside"):
            wire.read_message(r)
        assert wire.read_message(r) is None
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
