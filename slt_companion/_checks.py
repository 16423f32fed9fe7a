"""Argument checks shared by the package's modules (private: one rule for every integer argument)."""

from __future__ import annotations

import math
import numbers


def check_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is a whole number ≥ ``minimum``, else raise a ValueError naming ``name``.

    Python and NumPy integers and 0-d integer tensors are accepted, and so are whole floats such as ``1e4`` (so that
    ``n=1e4`` works); booleans, fractional or non-finite floats and non-numbers are refused.
    """
    if hasattr(value, "numel") and hasattr(value, "item") and getattr(value, "ndim", None) == 0 \
            and not value.is_floating_point() and not value.is_complex() and str(value.dtype) != "torch.bool":
        value = value.item()                               # a 0-d integer tensor: traj.model_at(torch.tensor(3), ...)
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
          and (isinstance(value, numbers.Integral) or float(value).is_integer()))
    if not ok or int(value) < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a ``float`` if it is a finite number > 0 (≥ 0 with ``allow_zero``), else raise a
    ValueError naming ``name``.

    Python, NumPy and one-element torch numbers are accepted (``np.float32(1e-3)``, ``torch.tensor(0.5)``);
    booleans, non-finite values and non-numbers are refused.
    """
    v = value
    if hasattr(v, "numel") and hasattr(v, "item") and not isinstance(v, bool):   # a torch tensor
        v = v.item() if v.numel() == 1 and not v.is_complex() else None
    elif hasattr(v, "ndim") and getattr(v, "ndim", None) == 0 and hasattr(v, "item"):   # a 0-d NumPy array
        v = v.item()
    ok = (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))
          and (float(v) > 0 or (allow_zero and float(v) == 0)))
    if not ok:
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(v)


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn``, called from the function that warns, that points at the first frame
    outside this package: the reader's line, however deep inside the package the warning is raised."""
    import sys

    frame, level = sys._getframe(1), 1
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("slt_companion"):
        frame, level = frame.f_back, level + 1
    return level


def check_symbols(name: str, x, size: int, what: str) -> None:
    """Raise ``ValueError`` unless the integers in ``x`` lie in ``[0, size)`` (``what`` names the bound, e.g.
    ``"vocab_size = 65"``). Skipped inside a torch.func transform (vmap over SGLD chains) and under torch.compile,
    where a data-dependent check cannot run."""
    import torch
    from torch._C._functorch import is_functorch_wrapped_tensor

    if not x.numel() or torch.compiler.is_compiling() or is_functorch_wrapped_tensor(x):
        return
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= size:
        raise ValueError(f"{name} must lie in [0, {what}), got values from {lo} to {hi}")
