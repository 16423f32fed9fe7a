"""Argument checks shared by the package's modules (private: one rule for every integer argument)."""

from __future__ import annotations

import numbers


def check_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is a whole number ≥ ``minimum``, else raise a ValueError naming ``name``.

    Python and NumPy integers are accepted, and so are whole floats such as ``1e4`` (so that ``n=1e4`` works);
    booleans, fractional or non-finite floats and non-numbers are refused.
    """
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
          and (isinstance(value, numbers.Integral) or float(value).is_integer()))
    if not ok or int(value) < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)
