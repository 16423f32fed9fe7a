"""Results on disk, keyed by a hash of the configuration, the package version and its source code.

The book's long runs go through :func:`cached`: the first build computes and stores, an unchanged
rebuild loads. Changing any config value, the package version or any source file of the package changes
the key, so results are never stale. An entry that cannot be read (truncated file, edited by hand) is reported with a warning and
recomputed -- never a crash and never a silently wrong number; a result that cannot be written (read-only or
uncreatable folder, a value the cache cannot store) is returned with a warning -- a finished computation is never
lost.

Entries are ``.npz`` files read with ``allow_pickle=False`` (no code runs on load). A result is a
``dict`` whose values are numbers, strings, booleans, ``None``, lists of numbers (NumPy scalars in them are stored
as Python numbers), NumPy arrays, torch tensors or nested dicts of those.

Where: ``$SLT_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/slt_companion`` (``~/.cache/slt_companion``).

Computed once, also in parallel: while a process computes an entry it holds ``<entry>.lock`` (its host and pid); another
process on the same machine that needs the same entry waits for it and loads it instead of computing it again (two
notebooks of a parallel book build that share a training run). A lock whose process is gone is removed; a lock from
another host, or a folder where no lock can be created, is not waited for.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import __version__
from ._checks import user_stacklevel

_META = "__meta__"


def cache_dir() -> Path:
    """The cache folder (created on first write)."""
    env = os.environ.get("SLT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "slt_companion"


def _canonical(obj: Any) -> Any:
    """A JSON-able canonical form of a config in which values of different types never meet: a dict becomes
    ``{"dict": [[key, value], ...]}`` sorted by key (so key order does not matter, and the key ``1`` is not the key
    ``"1"``), a float ``{"float": repr}`` (exact; not the string ``"1.0"``, nor ``nan`` the string ``"nan"``); lists
    and tuples are the same list, NumPy scalars the Python ones."""
    if isinstance(obj, dict):
        items = [[_canonical(k), _canonical(v)] for k, v in obj.items()]
        return {"dict": sorted(items, key=lambda kv: json.dumps(kv[0], sort_keys=True))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if isinstance(obj, float):
        return {"float": repr(obj)}  # exact round-trip, distinguishes 0.1 from 0.1000000001
    if isinstance(obj, (np.integer, np.floating)):
        return _canonical(obj.item())
    if isinstance(obj, (torch.device, torch.dtype)):
        return str(obj)
    raise TypeError(
        f"config value {obj!r} of type {type(obj).__name__} cannot be hashed into a cache key; "
        "use numbers, strings, booleans, None, lists or dicts of those."
    )


@functools.lru_cache(maxsize=1)
def package_fingerprint() -> str:
    """SHA-256 of the package's source files: any edit to ``slt_companion`` invalidates every cached result,
    so a changed estimator can never leave an old number in the book."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(name: str, config: dict) -> str:
    """The hex key of ``(name, config, package version and source, quick mode)``: SHA-256 of a canonical JSON form.

    Quick mode (``SLT_QUICK=1``) is part of the key, so a result computed at quick sizes is never served to a
    full-size run that passed the same ``config``."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    from . import config as _config  # quick-mode results never answer for full-size ones

    payload = json.dumps(
        {"name": name, "config": _canonical(config), "version": __version__,
         "source": package_fingerprint(), "quick": _config.QUICK},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def entry_path(name: str, config: dict) -> Path:
    """Where the entry for ``(name, config)`` lives (it may not exist yet)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return cache_dir() / f"{safe}-{cache_key(name, config)}.npz"


#: the layout of an entry's ``__meta__`` record; an entry without it (or with another) is treated as corrupt
_FORMAT = 2


def _plain_list(value: list | tuple) -> list:
    """``value`` as a list, NumPy scalars in it (and in nested lists) as Python numbers."""
    return [_plain_list(v) if isinstance(v, (list, tuple)) else v.item() if isinstance(v, np.generic) else v
            for v in value]


def _flatten(result: dict, prefix: str, arrays: dict, meta: dict) -> None:
    for key, value in result.items():
        if not isinstance(key, str) or "/" in key:
            raise TypeError(f"result keys must be strings without '/', got {key!r}")
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            meta[path] = {"kind": "dict"}
            _flatten(value, path + "/", arrays, meta)
        elif isinstance(value, torch.Tensor):
            try:
                arrays[path] = value.detach().cpu().numpy()
            except TypeError as err:                       # bfloat16 and other dtypes NumPy has not
                raise TypeError(f"result[{path!r}] is a {value.dtype} tensor, which NumPy cannot hold; "
                                "convert it (.float()) to store it") from err
            meta[path] = {"kind": "tensor"}
        elif isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"result[{path!r}] is an object array; store numbers only")
            arrays[path] = value
            meta[path] = {"kind": "array"}
        elif isinstance(value, (np.integer, np.floating, np.bool_)):
            meta[path] = {"kind": "value", "value": value.item()}
        elif isinstance(value, (bool, int, float, str)) or value is None:
            meta[path] = {"kind": "value", "value": value}
        elif isinstance(value, (list, tuple)):
            value = _plain_list(value)                     # `list(np.arange(3))`: NumPy scalars as Python numbers
            try:
                json.dumps(value)
            except (TypeError, ValueError) as err:
                raise TypeError(f"result[{path!r}] is a list that is not plain numbers/strings") from err
            meta[path] = {"kind": "value", "value": value}
        else:
            raise TypeError(
                f"result[{path!r}] has type {type(value).__name__}, which the cache cannot store; "
                "use numbers, strings, arrays, tensors or dicts of those."
            )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # exists but not ours (PermissionError), or cannot tell
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list:
    """Delete the temporary files of :func:`atomic_write` in ``folder`` whose writing process is gone (killed
    mid-write, so its own clean-up never ran). Returns the paths removed."""
    removed = []
    try:
        candidates = list(Path(folder).glob(".*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        parts = tmp.name.split(".")
        try:                 # .<target name>.<pid>.<random>.tmp
            pid = int(parts[-3])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` atomically: ``write(file_object)`` fills a temporary file next to it, which then replaces it.

    The temporary file is named ``.<name>.<pid>.<random>.tmp``; one left behind by a killed process is deleted by
    the next write into the same folder (:func:`remove_stale_temporaries`). Raises ``OSError`` if the folder cannot
    be created or written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(path: Path, result: dict) -> None:
    """Write ``result`` to ``path`` atomically (:func:`atomic_write`).

    Arrays are stored under generated names (``a0``, ``a1``, ...) and the result's own keys only in the metadata,
    so any key -- ``file``, ``allow_pickle`` -- round-trips."""
    arrays: dict = {}
    entries: dict = {}
    _flatten(result, "", arrays, entries)
    stored = {}
    for i, (key, value) in enumerate(arrays.items()):
        stored[f"a{i}"] = value
        entries[key]["array"] = f"a{i}"
    header = np.array(json.dumps({"format": _FORMAT, "entries": entries}))
    atomic_write(path, lambda fh: np.savez(fh, **{_META: header}, **stored))


_KINDS = ("dict", "value", "array", "tensor")


def load(path: Path) -> dict:
    """Read an entry written by :func:`save`. Raises ``ValueError`` if it is corrupt (unreadable, or metadata that
    is not what :func:`save` writes)."""
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:   # (np.load(path) leaks a corrupt file)
            header = json.loads(str(npz[_META]))
            if not isinstance(header, dict) or header.get("format") != _FORMAT \
                    or not isinstance(header.get("entries"), dict):
                raise ValueError(f"metadata is not a format-{_FORMAT} record")
            entries = header["entries"]
            arrays = {}
            for key, entry in entries.items():
                if not isinstance(entry, dict) or entry.get("kind") not in _KINDS:
                    raise ValueError(f"bad metadata for {key!r}: {entry!r}")
                if entry["kind"] in ("array", "tensor"):
                    arrays[key] = npz[entry["array"]]
    except Exception as err:  # zipfile.BadZipFile, OSError, KeyError, JSONDecodeError, TypeError, ...
        raise ValueError(f"cache entry {path} is corrupt ({type(err).__name__}: {err})") from err
    result: dict = {}
    try:
        for key in sorted(entries, key=lambda k: k.count("/")):
            *parents, leaf = key.split("/")
            node = result
            for part in parents:
                node = node[part]
            if not isinstance(node, dict):
                raise TypeError(f"{key!r} lies under a value that is not a dict")
            kind = entries[key]["kind"]
            if kind == "dict":
                node[leaf] = {}
            elif kind == "value":
                node[leaf] = entries[key]["value"]
            else:
                node[leaf] = torch.from_numpy(arrays[key]) if kind == "tensor" else arrays[key]
    except (KeyError, TypeError) as err:
        raise ValueError(f"cache entry {path} is corrupt ({type(err).__name__}: {err})") from err
    return result


#: seconds between two looks at an entry another process is computing
LOCK_POLL_SECONDS = 0.5


def _lock_owner(lock: Path) -> tuple[str, int] | None:
    """``(host, pid)`` written in ``lock``, or None when it is gone or not yet written."""
    try:
        host, pid = lock.read_text().split()
        return host, int(pid)
    except (OSError, ValueError):
        return None


def _claim(path: Path, *, wait: bool = True) -> Callable[[], None] | None:
    """Claim the computation of entry ``path``: returns a function that releases the claim, or None when another
    process on this machine computed the entry while we waited (``wait=True``): load it then."""
    lock = path.with_name(path.name + ".lock")
    host = socket.gethostname()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    unreadable = 0
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None and (owner[0] != host or owner[1] == os.getpid()):
                return lambda: None                        # another machine, or ourselves: do not wait
            unreadable = unreadable + 1 if owner is None else 0
            # its process is gone, or 5 s without an owner line (left by a crash): remove the stale lock, retry
            if (owner is None and unreadable > 100) or (owner is not None and not _pid_alive(owner[1])):
                try:
                    lock.unlink()
                except OSError:
                    return lambda: None
                continue
            time.sleep(0.05 if owner is None else LOCK_POLL_SECONDS)   # being written, or being computed
            if wait and _exists(path) and not _exists(lock):
                return None
            continue
        except OSError:                                    # cannot create a lock here: compute unguarded
            return lambda: None
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{host} {os.getpid()}")

        def release() -> None:
            try:
                if _lock_owner(lock) == (host, os.getpid()):
                    lock.unlink()
            except OSError:
                pass
        return release


def cached(name: str, config: dict, compute: Callable[[], dict], *, refresh: bool = False,
           check: Callable[[dict], str | None] | None = None) -> dict:
    """Return the stored result of ``compute()`` for ``(name, config)``, computing it if needed.

    ``compute`` takes no arguments and returns a dict (see the module docstring for what it may hold).
    ``refresh=True`` recomputes and overwrites. A corrupt entry gives a ``RuntimeWarning`` and is
    recomputed -- so is a readable one for which ``check(entry)`` says what is wrong with it (a key missing, an
    array of another length; ``None`` when it is fine); a result that cannot be written (a read-only or uncreatable folder, or a value the cache cannot
    store: a non-string key, a bfloat16 tensor, a list of tensors) gives a ``RuntimeWarning`` and is returned all
    the same. Delete the file (:func:`entry_path`) to force a recomputation by hand.
    """
    path = entry_path(name, config)

    def load_checked() -> dict:
        entry = load(path)
        why = check(entry) if check is not None else None
        if why:
            raise ValueError(f"cache entry {path} is corrupt ({why})")
        return entry

    if not refresh and _exists(path):
        try:
            return load_checked()
        except ValueError as err:
            warnings.warn(f"{err}; recomputing it.", RuntimeWarning, stacklevel=user_stacklevel())
            refresh = True                                 # do not wait for, or load, the corrupt entry again
    release = _claim(path, wait=not refresh)
    if release is None:                                    # another process computed it while we waited
        try:
            return load_checked()
        except ValueError as err:
            warnings.warn(f"{err}; recomputing it.", RuntimeWarning, stacklevel=user_stacklevel())
            release = _claim(path, wait=False)
    try:
        result = compute()
        if not isinstance(result, dict):
            raise TypeError(f"compute() for {name!r} must return a dict, got {type(result).__name__}")
        try:
            save(path, result)
        except OSError as err:   # a finished computation is never lost because the cache cannot be written
            warnings.warn(f"could not store the result of {name!r} in the cache ({type(err).__name__}: {err}); "
                          "returning it uncached. Set SLT_CACHE_DIR to a writable folder to keep results.",
                          RuntimeWarning, stacklevel=user_stacklevel())
        except TypeError as err:  # ... nor because it holds a value the cache cannot store
            warnings.warn(f"could not store the result of {name!r} in the cache ({err}); returning it uncached. "
                          "Return numbers, strings, lists of those, arrays, tensors or dicts of those to keep it.",
                          RuntimeWarning, stacklevel=user_stacklevel())
    finally:
        release()
    return result


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False
