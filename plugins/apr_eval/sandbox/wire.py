"""Plain values across the referee/candidate boundary: a codec that can only ever build builtins.

The referee (which runs the tests) and the candidate (which runs the model's code) are separate
processes; arguments and return values travel between them as JSON with a few type tags. Decoding
builds nothing but ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``,
``list``, ``tuple``, ``dict``, ``set``, ``frozenset`` and list iterators, so a hostile candidate
cannot hand the tests an object whose ``__eq__`` always answers True, or anything with code in
it. Subclasses of those types (a ``namedtuple``, a ``Counter``) arrive as their base type;
iterators (generators, ``map``) are drained and arrive as an iterator over the drained values.
Anything else cannot be sent (`Unsendable`). Floats go as ``float.hex`` and ints as hex, so
both round-trip exactly (nan, inf and ints past ``sys.get_int_max_str_digits`` included).

Framing: an 8-byte big-endian length, then the UTF-8 JSON; `read_message` refuses lengths over
`MAX_MESSAGE`. Standard library only: this file is imported inside the sandbox by `driver`.
"""

import json
import os

MAX_MESSAGE = 256 << 20


class Unsendable(TypeError):
    """A value of a type that cannot cross the process boundary."""


def encode(value):
    """``value`` as a JSON-ready structure; raises `Unsendable` for anything but plain values."""
    if value is None or value is True or value is False:
        return value
    if isinstance(value, int):
        return {"i": hex(int(value))}
    if isinstance(value, float):
        return {"f": float(value).hex()}
    if isinstance(value, str):
        return str(value)
    if isinstance(value, complex):
        return {"c": [value.real.hex(), value.imag.hex()]}
    if isinstance(value, (bytes, bytearray)):
        return {"b" if isinstance(value, bytes) else "y": bytes(value).hex()}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        return {"t": [encode(v) for v in value]}
    if isinstance(value, dict):
        return {"d": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, frozenset):
        return {"z": [encode(v) for v in value]}
    if isinstance(value, set):
        return {"s": [encode(v) for v in value]}
    if hasattr(type(value), "__next__") and hasattr(type(value), "__iter__"):
        return {"n": [encode(v) for v in value]}
    raise Unsendable(f"a {type(value).__module__}.{type(value).__qualname__} cannot be passed between "
                     f"the tests and the candidate (only plain values: numbers, strings, bytes, "
                     f"lists, tuples, dicts, sets, None)")


_DECODERS = {
    "i": lambda v: int(v, 16),
    "f": float.fromhex,
    "c": lambda v: complex(float.fromhex(v[0]), float.fromhex(v[1])),
    "b": bytes.fromhex,
    "y": lambda v: bytearray.fromhex(v),
    "t": lambda v: tuple(decode(x) for x in v),
    "d": lambda v: {decode(k): decode(x) for k, x in v},
    "z": lambda v: frozenset(decode(x) for x in v),
    "s": lambda v: {decode(x) for x in v},
    "n": lambda v: iter([decode(x) for x in v]),
}


def decode(data):
    """The value `encode` described; raises ``ValueError``/``TypeError`` on anything malformed."""
    if data is None or isinstance(data, (bool, str)):
        return data
    if isinstance(data, list):
        return [decode(x) for x in data]
    if isinstance(data, dict) and len(data) == 1:
        (tag, payload), = data.items()
        if tag in _DECODERS:
            if tag in ("i", "f", "b", "y") and not isinstance(payload, str):
                raise ValueError(f"malformed {tag!r} value")
            if tag not in ("i", "f", "b", "y") and not isinstance(payload, list):
                raise ValueError(f"malformed {tag!r} value")
            try:
                return _DECODERS[tag](payload)
            except (IndexError, KeyError, AttributeError, OverflowError) as exc:
                raise ValueError(f"malformed {tag!r} value: {exc}") from None
    raise ValueError(f"not a wire value: {str(data)[:80]}")


def write_message(fd: int, message) -> None:
    body = json.dumps(message, separators=(",", ":")).encode()
    data = len(body).to_bytes(8, "big") + body
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_message(fd: int):
    """The next message, or None at end of stream; ``ValueError`` on a malformed or huge one."""
    head = _read_exactly(fd, 8)
    if head is None:
        return None
    size = int.from_bytes(head, "big")
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes refused (limit {MAX_MESSAGE})")
    body = _read_exactly(fd, size)
    if body is None:
        raise ValueError("stream ended inside a message")
    return json.loads(body.decode("utf-8"))
