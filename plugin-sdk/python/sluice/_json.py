"""JSON the way the Rust SDK (serde_json) reads and writes it.

So a Python plugin and a Rust one publish the same bytes for the same value:
compact separators, object keys sorted (serde_json's ``Value`` map is
ordered), no ASCII escaping, non-finite floats as ``null``, integers as
integers and floats in the shortest form that round-trips, written as
serde_json's formatter (the ``zmij`` crate) writes them: fixed notation for
decimal exponents -5 to 15 (``6.0``, ``0.00001``), else ``1e-7``, ``1.5e+20``. Parsing accepts UTF-8 only
and refuses ``NaN``/``Infinity``, as serde_json does.
"""

import json
import math
from typing import Any

_I64_MIN = -(1 << 63)
_U64_MAX = (1 << 64) - 1


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(data: "bytes | str") -> Any:
    """Parse JSON text (bytes must be UTF-8). Raises ``ValueError``."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode("utf-8")  # UnicodeDecodeError is a ValueError
    return json.loads(data, parse_constant=_refuse_constant)


def format_float(x: float) -> str:
    """``x`` as serde_json writes an ``f64`` (the shortest round-trip digits)."""
    if not math.isfinite(x):
        return "null"
    if x == 0.0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    # Decimal exponent of the first digit, from the repr.
    point = len(whole) + (int(exp) if exp else 0)
    if whole == "0":
        point = -(len(frac) - len(frac.lstrip("0")))
    digits = digits.rstrip("0") or "0"
    n = len(digits)
    k = point - n  # exponent of the last digit
    kk = point
    if 0 <= k and kk <= 16:
        out = digits + "0" * k + ".0"
    elif 0 < kk <= 16:
        out = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        out = "0." + "0" * (-kk) + digits
    elif n == 1:
        out = f"{digits}e{kk - 1:+d}"
    else:
        out = f"{digits[0]}.{digits[1:]}e{kk - 1:+d}"
    return sign + out


def _encode(value: Any, out: list) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        # serde_json holds integers as i64/u64; wider ones become f64.
        out.append(str(value) if _I64_MIN <= value <= _U64_MAX else format_float(float(value)))
    elif isinstance(value, float):
        out.append(format_float(value))
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, dict):
        items = sorted((_key(k), v) for k, v in value.items())
        out.append("{")
        for i, (k, v) in enumerate(items):
            if i:
                out.append(",")
            out.append(json.dumps(k, ensure_ascii=False))
            out.append(":")
            _encode(v, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(",")
            _encode(v, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _key(k: Any) -> str:
    if isinstance(k, str):
        return k
    raise TypeError(f"JSON object keys must be strings, got {type(k).__name__}")


def dumps(value: Any) -> bytes:
    """Encode ``value`` as compact JSON bytes, byte-identical to serde_json."""
    out: list = []
    _encode(value, out)
    return "".join(out).encode("utf-8")
