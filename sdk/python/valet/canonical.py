"""The canonical JSON form of an action's arguments and its hash, exactly as
Valet's Go package canonical computes them (the args_hash of an action
token): object keys sorted by their UTF-8 bytes, no whitespace, strings
escaped as Go's encoding/json does without HTML escaping, integers that fit
in an int64 as plain integers (1, 1.0 and 1e0 are one number), other numbers
as Go writes a float64, and None/True/False as null/true/false. The hash is
the unpadded base64url SHA-256 of those bytes; None is the empty object."""

from __future__ import annotations

import base64
import hashlib
import math
from decimal import Decimal
from typing import Any, List

__all__ = ["canonical_args", "args_hash", "MAX_DEPTH"]

MAX_DEPTH = 32
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def canonical_args(args: Any) -> bytes:
    """The canonical bytes of an arguments object (a dict, or None for {})."""
    if args is None:
        return b"{}"
    if not isinstance(args, dict):
        raise ValueError("arguments must be a JSON object (a dict)")
    out: List[str] = []
    _write(out, args, 0)
    return "".join(out).encode("utf-8")


def args_hash(args: Any) -> str:
    """The unpadded base64url SHA-256 of the canonical arguments."""
    digest = hashlib.sha256(canonical_args(args)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _write(out: List[str], v: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"arguments nest deeper than {MAX_DEPTH}")
    if v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, str):
        out.append(_string(v))
    elif isinstance(v, int):
        out.append(_int(v))
    elif isinstance(v, float):
        out.append(_float(v))
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for i, e in enumerate(v):
            if i:
                out.append(",")
            _write(out, e, depth + 1)
        out.append("]")
    elif isinstance(v, dict):
        keys = []
        for k in v:
            if not isinstance(k, str):
                raise ValueError("arguments: object keys must be strings")
            keys.append(k)
        keys.sort(key=lambda k: k.encode("utf-8", "surrogatepass"))
        out.append("{")
        for i, k in enumerate(keys):
            if i:
                out.append(",")
            out.append(_string(k))
            out.append(":")
            _write(out, v[k], depth + 1)
        out.append("}")
    else:
        raise ValueError(f"arguments: unexpected {type(v).__name__}")


_ESC = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _string(s: str) -> str:
    # Go's encoding/json with SetEscapeHTML(false): ", \, \n, \r, \t, \b and
    # \f by name, other control characters and U+2028/U+2029 as \u00XX,
    # everything else as UTF-8; invalid UTF-8 (lone surrogates) as U+FFFD.
    parts = ['"']
    for ch in s:
        o = ord(ch)
        if ch in _ESC:
            parts.append(_ESC[ch])
        elif o < 0x20 or o in (0x2028, 0x2029):
            parts.append("\\u%04x" % o)
        elif 0xD800 <= o <= 0xDFFF:
            parts.append("\ufffd")
        else:
            parts.append(ch)
    parts.append('"')
    return "".join(parts)


def _int(i: int) -> str:
    if _INT64_MIN <= i <= _INT64_MAX:
        return str(i)
    return _float(float(i))


def _float(f: float) -> str:
    if math.isinf(f) or math.isnan(f):
        raise ValueError("arguments: number out of range")
    if f == math.trunc(f) and abs(f) < (1 << 53):
        return str(int(f))
    # Go writes a float64 with the shortest digits that read back (repr's),
    # in %f form for 1e-6 <= |f| < 1e21 and in %e form otherwise, where an
    # exponent of one digit loses its zero only when negative (1e-07 is
    # written 1e-7, 1e+21 stays).
    sign, digits, exp = Decimal(repr(f)).as_tuple()
    assert isinstance(exp, int)
    all_digits = "".join(map(str, digits)).lstrip("0")
    point = len(all_digits) + exp  # the decimal point sits after `point` digits
    ds = all_digits.rstrip("0") or "0"
    neg = "-" if sign else ""
    a = abs(f)
    if a < 1e-6 or a >= 1e21:
        e = point - 1
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        es = "-" if e < 0 else "+"
        ev = "%02d" % abs(e)
        if es == "-" and len(ev) == 2 and ev[0] == "0":
            ev = ev[1]
        return f"{neg}{mant}e{es}{ev}"
    if point <= 0:
        return f"{neg}0.{'0' * -point}{ds}"
    if point >= len(ds):
        return f"{neg}{ds}{'0' * (point - len(ds))}"
    return f"{neg}{ds[:point]}.{ds[point:]}"
