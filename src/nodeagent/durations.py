"""Go's time.Duration text, as Kubernetes config files and flags write it ("10s", "1m30s", "300ms")."""

from __future__ import annotations

import json
import re
from fractions import Fraction


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


_DURATION_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9,
                   "m": 60 * 10**9, "h": 3600 * 10**9}
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]*)")


def _duration_ns(text: str) -> int:
    """Go's time.ParseDuration, in integer nanoseconds; ValueError when Go would refuse it."""
    if not isinstance(text, str):
        raise ValueError(f"invalid duration {text!r}")
    sign, rest = (-1, text[1:]) if text[:1] == "-" else (1, text[1:] if text[:1] == "+" else text)
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(f"invalid duration {_q(text)}")
    total, pos = Fraction(0), 0
    while pos < len(rest):
        part = _DURATION_PART.match(rest, pos)
        whole, frac, unit = part.groups()
        if not (whole or frac) or unit not in _DURATION_UNITS:
            raise ValueError(f"invalid duration {_q(text)}")
        total += Fraction(f"{whole or 0}.{frac or 0}") * _DURATION_UNITS[unit]
        pos = part.end()
    ns = int(total) * sign
    if abs(ns) > 2**63 - 1:
        raise ValueError(f"invalid duration {_q(text)}: out of range")
    return ns


def parse_duration(text: str) -> float:
    """A Go duration ("10s", "1m0s", "1h30m", "300ms", "0") in seconds; ValueError if invalid."""
    return _duration_ns(text) / 10**9


def format_duration(seconds: float) -> str:
    """Seconds as Go's Duration.String() writes them: "2m0s", "30s", "1h0m0s", "1.5s", "300ms"."""
    ns = round(seconds * 10**9)
    sign, ns = ("-" if ns < 0 else ""), abs(ns)
    if ns == 0:
        return "0s"
    if ns < 10**9:
        for unit, scale in (("ms", 10**6), ("µs", 10**3), ("ns", 1)):
            if ns >= scale:
                return sign + _fraction(ns, scale) + unit
    hours, ns = divmod(ns, 3600 * 10**9)
    minutes, ns = divmod(ns, 60 * 10**9)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "")
    return sign + text + _fraction(ns, 10**9) + "s"


def _fraction(value: int, scale: int) -> str:
    whole, frac = divmod(value, scale)
    digits = str(frac).rjust(len(str(scale)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)
