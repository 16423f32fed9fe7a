"""Run-time configuration read once from the environment.

``SLT_QUICK=1`` (set by ``make test`` and CI) shrinks every long computation in the package to seconds
while keeping the code path identical; notebooks never branch on it themselves (STYLE.md, convention 7).
Functions that have a "size" (grid points, steps, draws) take their default from :func:`size`.
"""

from __future__ import annotations

import os

import torch

_TRUE = {"1", "true", "yes", "on"}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


#: True when the environment variable ``SLT_QUICK`` is set to 1/true/yes/on.
QUICK: bool = _flag("SLT_QUICK")


def size(full, quick):
    """Return ``quick`` in quick mode (``SLT_QUICK=1``) and ``full`` otherwise."""
    return quick if QUICK else full


def default_device() -> torch.device:
    """The best available device: CUDA if present, else Apple's MPS, else the CPU.

    ``SLT_DEVICE`` (e.g. ``cpu``) overrides the choice, which is how the book is forced onto the CPU.
    """
    forced = os.environ.get("SLT_DEVICE", "").strip()
    if forced:
        return resolve_device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device=None) -> torch.device:
    """Turn ``device`` (None, a string or a :class:`torch.device`) into a usable :class:`torch.device`.

    ``None`` means :func:`default_device`. A device that is not available raises a ``ValueError`` that
    names the argument and says what is available instead.
    """
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device={device!r} is not a device name; use 'cpu', 'cuda', 'cuda:0' or 'mps'."
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} asks for CUDA, but torch.cuda.is_available() is False on this machine; "
            "pass device='cpu' (or device=None to pick the best available device)."
        )
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(
                f"device={device!r} asks for Apple's MPS, which is not available here; pass device='cpu'."
            )
    return dev
