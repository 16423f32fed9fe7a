r"""Does it replicate? An experiment rerun over seeds, with the fraction of seeds for which each claim holds and
the spread of its key numbers.

A development chapter makes its claims on one training run. :func:`replicate` reruns the chapter's experiment
(``fn(seed)``, at a size that fits the build) for several seeds, each run cached on its own, and returns a
:class:`Replication`: one row per seed, in which **booleans are claims** ("the run passes through the ridge") and
**numbers are measurements** (a boundary step, a λ̂). A chapter then asserts the *replicated* statement -- "holds
for at least 4 of 5 seeds", or, where it does not, the sentence says "in 3 of 5 runs" -- never the single-seed one.

``fn(seed)`` must change every source of randomness with the seed: the model's initialisation, the data and the
sampler. It returns a flat dict of ``bool`` / ``int`` / ``float`` (NumPy scalars accepted; ``nan`` allowed for a
number that a seed could not measure, e.g. a boundary that did not appear).

Used in: every chapter of Part III and the Part IV chapters that train models ("Does it replicate?").
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

__all__ = ["replicate", "Replication", "REPLICATES_AT", "code_fingerprint", "runs_phrase", "value_range"]

#: the fraction of seeds for which a claim must hold to be stated without qualification (4 of 5)
REPLICATES_AT = 0.8


def runs_phrase(rows) -> str:
    """``"the run with seed 3"`` / ``"the runs with seeds 1, 4"``: the seeds of ``rows`` (dicts with a ``"seed"``, as a
    replication's rows) in the words the development chapters use when a claim fails or holds in some runs only."""
    seeds = [str(r["seed"]) for r in rows]
    if not seeds:
        raise ValueError("rows is empty: there is no run to name")
    s_ = "s" if len(seeds) > 1 else ""
    return f"the run{s_} with seed{s_} {', '.join(seeds)}"


def value_range(values, fmt: str, *, sep: str = "–", same: str = "{}") -> str:
    """The range of ``values`` as the chapters write it: ``"0.31–0.47"`` (lowest and highest, each formatted with
    ``fmt``, joined by ``sep``), or ``same`` with the one value when both ends read alike at this format (``"{} in
    every seed"`` says so; the default, the value alone). NaN and ±inf are left out; none left is an error (where
    the pages' own helpers printed "nan–nan")."""
    v = [x.item() if isinstance(x, np.generic) else x for x in values]     # whole numbers stay whole: "1,000"
    v = [x for x in v if math.isfinite(x)]
    if not v:
        raise ValueError("values holds no finite number: there is no range to state")
    lo, hi = format(min(v), fmt), format(max(v), fmt)
    return same.format(lo) if lo == hi else f"{lo}{sep}{hi}"


def _seeds(seeds) -> list[int]:
    from ._checks import check_int

    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        return list(range(check_int("seeds", seeds, minimum=1)))
    try:
        out = [check_int("seeds[]", s, minimum=0) for s in seeds]
    except TypeError as err:
        raise TypeError(f"seeds must be a number of seeds or a list of non-negative integers, got {seeds!r}") from err
    if not out:
        raise ValueError("seeds is empty: give at least one seed (5 or more for a replication)")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct, got {out}")
    return out


def _plain(key: str, value):
    """A row value as a Python bool / int / float, or a TypeError naming the key."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _plain(key, value.item())
    raise TypeError(f"fn(seed) returned {key!r} = {value!r} ({type(value).__name__}): a replication row holds "
                    "booleans (claims) and numbers (measurements) only")


@dataclass
class Replication:
    """The result of :func:`replicate`.

    - ``name``, ``seeds``; ``rows``: one dict per seed, ``{"seed": s, **fn(s)}``;
    - ``claims``: the keys whose values are booleans; ``numbers``: the keys whose values are numbers.

    Methods: :meth:`holds` / :meth:`fraction` / :meth:`replicates` / :meth:`verdict` for a claim,
    :meth:`values` / :meth:`spread` for a number, :meth:`claims_table` and :meth:`numbers_table` (Markdown, for
    ``glue``), :meth:`plot` (the spread of the numbers, one dot per seed).
    """

    name: str
    seeds: list
    rows: list
    claims: list = field(default_factory=list)
    numbers: list = field(default_factory=list)

    def _check(self, key: str, kind: str) -> None:
        pool = self.claims if kind == "claim" else self.numbers
        if key not in pool:
            raise KeyError(f"{key!r} is not a {kind} of this replication; its {kind}s are {pool}")

    def holds(self, claim: str) -> int:
        """For how many seeds ``claim`` is True."""
        self._check(claim, "claim")
        return sum(bool(r[claim]) for r in self.rows)

    def fraction(self, claim: str) -> float:
        return self.holds(claim) / len(self.rows)

    def replicates(self, claim: str, at_least: float = REPLICATES_AT) -> bool:
        """True when ``claim`` holds for at least ``at_least`` of the seeds (default 4 of 5)."""
        return self.fraction(claim) >= at_least - 1e-12

    def verdict(self, claim: str) -> str:
        """``"5 of 5 seeds"`` -- the phrase a page glues beside the claim."""
        return f"{self.holds(claim)} of {len(self.rows)} seeds"

    def values(self, key: str) -> np.ndarray:
        self._check(key, "number")
        return np.array([r[key] for r in self.rows], dtype=float)

    def spread(self, key: str) -> dict:
        """``{"mean", "sd", "min", "max", "n"}`` of a number over the seeds that measured it (NaN left out)."""
        v = self.values(key)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan, "n": 0}
        return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan,
                "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}

    def range_text(self, key: str, fmt: str, **kwargs) -> str:
        """:func:`value_range` of a number over the seeds that measured it: ``rep.range_text("frac", ".0%")``."""
        return value_range(self.values(key), fmt, **kwargs)

    def claims_table(self, labels: dict | None = None) -> str:
        """Markdown: each claim, for how many seeds it holds, and whether that is at least 4 of 5."""
        labels = labels or {}
        lines = ["| claim | holds for | replicates (≥ 4 of 5) |", "|---|---|---|"]
        for c in self.claims:
            lines.append(f"| {labels.get(c, c)} | {self.verdict(c)} | {'yes' if self.replicates(c) else '**no**'} |")
        return "\n".join(lines)

    def numbers_table(self, labels: dict | None = None, fmt: str | dict = ".3g") -> str:
        """Markdown: one row per seed with every number, and a last row with mean ± sd over the seeds that measured it
        (``(n of N)`` when some did not). ``fmt``: a format for every number, or ``{key: format}`` (the others
        ``.3g``), e.g. ``{"rhat": ".3f"}``. A NaN (not measured in that seed) reads "—"; with a ``g`` format a
        number of 1,000 or more is written whole with thousands separators (``1,880``, not ``1.88e+03``)."""
        labels = labels or {}
        fmts = {k: (fmt.get(k, ".3g") if isinstance(fmt, dict) else fmt) for k in self.numbers}
        head = "| seed | " + " | ".join(labels.get(k, k) for k in self.numbers) + " |"
        lines = [head, "|" + "---|" * (len(self.numbers) + 1)]
        for r in self.rows:
            lines.append(f"| {r['seed']} | " + " | ".join(_cell(r[k], fmts[k]) for k in self.numbers) + " |")
        cells = []
        for k in self.numbers:
            s = self.spread(k)
            cell = f"{_cell(s['mean'], fmts[k])} ± {_cell(s['sd'], fmts[k])}" if s["n"] > 1 else _cell(s["mean"], fmts[k])
            cells.append(cell + (f" ({s['n']} of {len(self.rows)})" if 0 < s["n"] < len(self.rows) else ""))
        lines.append("| **mean ± sd** | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, keys=None, *, axes=None, labels: dict | None = None, reference: dict | None = None,
             ylabels: dict | None = None):
        """One panel per number: a dot per seed, the mean ± sd as a bar, and ``reference[key]`` (e.g. the chapter's
        single-seed value or the paper's) as a dashed line. Each panel is titled ``labels[key]`` and its y axis is
        labelled ``ylabels[key]`` (with units), else ``labels[key]``, else the key. Returns the axes."""
        import matplotlib.pyplot as plt

        from .plot import COLORS

        keys = list(self.numbers if keys is None else keys)
        labels, reference, ylabels = labels or {}, reference or {}, ylabels or {}
        if axes is None:
            _, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys) + 0.6, 3.0), squeeze=False)
            axes = axes[0]
        for ax, k in zip(np.atleast_1d(axes), keys):
            v = self.values(k)
            jitter = np.linspace(-0.12, 0.12, len(v)) if len(v) > 1 else np.zeros(1)
            ax.scatter(jitter, v, color=COLORS["estimate"], zorder=3, s=22, label="one seed")
            s = self.spread(k)
            if s["n"] > 1:
                ax.errorbar([0.32], [s["mean"]], yerr=[s["sd"]], fmt="s", color="k", ms=4, capsize=3,
                            label="mean ± sd")
            if k in reference:
                ax.axhline(reference[k], color=COLORS["theory"], ls="--", lw=1, label="reference")
            ax.set_xlim(-0.4, 0.6)
            ax.set_xticks([])
            ax.set_title(labels.get(k, k), fontsize=9)
            ax.set_ylabel(ylabels.get(k, labels.get(k, k)), fontsize=8)
        np.atleast_1d(axes)[0].legend(fontsize=7.5, loc="best")
        return axes


def _cell(x, fmt: str) -> str:
    """One number of :meth:`Replication.numbers_table`: "—" for NaN, whole with separators for |x| ≥ 1000 under a
    ``g`` format (which would write 1.88e+03), else ``format(x, fmt)``."""
    x = float(x)
    if math.isnan(x):
        return "—"
    if fmt.endswith("g") and math.isfinite(x) and abs(x) >= 1000:
        return f"{x:,.0f}"
    return format(x, fmt)


def _stable_repr(value, _seen: frozenset = frozenset(), *, objects: bool = True) -> str:
    """``repr(value)``, or the type's name where the repr holds a memory address (it changes from run to run).

    A NumPy array or torch tensor is described by its shape, dtype and a hash of its bytes (its ``repr`` elides all but
    a few entries of a large one); a dict, list or tuple by its items' stable reprs, a set by their sorted stable reprs
    (a set of strings iterates in another order in every process); a container inside itself as ``...``. With
    ``objects=False`` any other object (a model, a data set, a result holding a wall time) stands as its type's name."""
    import hashlib
    import sys

    torch = sys.modules.get("torch")
    if isinstance(value, np.ndarray) or torch is not None and isinstance(value, torch.Tensor):
        try:
            if isinstance(value, np.ndarray):
                if value.dtype.hasobject:                          # its bytes are pointers, different every run
                    raise TypeError
                raw = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
            else:                                                  # any dtype (bfloat16 too), any device
                raw = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            digest = hashlib.blake2b(raw.data, digest_size=16).hexdigest()
            return f"{type(value).__name__}(shape={tuple(value.shape)}, dtype={value.dtype}, blake2b={digest})"
        except (TypeError, RuntimeError, ValueError):
            pass                                                   # a sparse tensor, an object array: its repr
    elif type(value) in (list, tuple, dict, set, frozenset):
        if id(value) in _seen:
            return "..."
        inner = _seen | {id(value)}
        if type(value) is dict:
            return "{" + ", ".join(f"{_stable_repr(k, inner, objects=objects)}: {_stable_repr(v, inner, objects=objects)}"
                                   for k, v in value.items()) + "}"
        items = [_stable_repr(v, inner, objects=objects) for v in value]
        if type(value) in (set, frozenset):
            return f"{type(value).__name__}({{{', '.join(sorted(items))}}})"
        return f"[{', '.join(items)}]" if type(value) is list else f"({', '.join(items)}{',' if len(items) == 1 else ''})"
    elif not objects and not isinstance(value, (int, float, complex, str, bytes, type(None), np.generic)):
        return type(value).__qualname__
    r = repr(value)
    return type(value).__qualname__ if " at 0x" in r else r


def code_fingerprint(fn) -> str | None:
    """A hash of what ``fn`` computes as written: for a function its bytecode, the names it uses and its constants
    (nested functions included), its default arguments and, for a closure, the values it captures from the
    enclosing function; not its file name or line numbers (those change between runs of a notebook). For a
    ``functools.partial`` the function's fingerprint and the bound arguments' ``repr``. ``None`` for other callables.

    Default arguments and captured values are hashed alike, by a stable ``repr``: numbers, strings and containers of
    them by value, arrays and tensors by shape, dtype and a hash of their bytes; an object whose ``repr`` holds a
    memory address (a function, most objects) by its type's name only, and a model by its ``repr`` (its layers, not
    its weights). A change to such a value is not seen: describe it in ``replicate``'s ``config`` or bump ``version``.
    Global names ``fn`` reads are hashed by value when they hold data (numbers, strings, arrays, tensors and
    containers of them: a page's settings dict, a list of sizes) and by their type's name otherwise (a model, a data
    set, a trajectory: describe those in ``config``); modules and classes by name; a function defined in ``fn``'s own module (a helper beside it on the page) by its own
    fingerprint, recursively, and functions from other modules (the package's, torch's) by their names only: the
    package's own code keys every cache entry already."""
    return _fingerprint(fn, set())


def _global_names(code) -> set[str]:
    """The names a code object (and the functions, comprehensions and lambdas inside it) looks up: globals among them."""
    names = set(code.co_names)
    for c in code.co_consts:
        if hasattr(c, "co_code"):
            names |= _global_names(c)
    return names


def _fingerprint(fn, _busy: set) -> str | None:
    """:func:`code_fingerprint`, with ``_busy`` the ids of the functions being fingerprinted (a helper that calls
    itself, or two helpers that call each other, are hashed once)."""
    import functools
    import hashlib
    import types

    def parts(code):
        yield code.co_code
        yield repr((code.co_names, code.co_varnames, code.co_freevars)).encode()
        for c in code.co_consts:
            if hasattr(c, "co_code"):
                yield from parts(c)
            elif isinstance(c, frozenset):            # `x in {"a", "b"}`: its repr's order varies with the hash seed
                yield repr(sorted(map(repr, c))).encode()
            else:
                yield repr(c).encode()

    if isinstance(fn, functools.partial):
        inner = _fingerprint(fn.func, _busy)
        return None if inner is None else hashlib.sha256(
            (inner + repr(fn.args) + repr(sorted(fn.keywords.items()))).encode()).hexdigest()[:16]
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    h = hashlib.sha256()
    for b in parts(code):
        h.update(b)
    # default arguments are part of what fn computes: `def fn(seed, scale=2.0)` edited to 3.0 is another function
    defaults = list(getattr(fn, "__defaults__", None) or ()) + sorted((getattr(fn, "__kwdefaults__", None) or {}).items())
    h.update(repr([_stable_repr(v) for v in defaults]).encode())
    # so are the values a closure captures: `lambda s: run(s, k)` inside `for k in ...` (none: the hash is unchanged)
    cells = getattr(fn, "__closure__", None) or ()
    if cells:
        def cell_value(cell):
            try:
                return _stable_repr(cell.cell_contents)
            except ValueError:                        # a cell not yet filled (a name assigned after fn is defined)
                return "<empty cell>"
        h.update(repr([cell_value(c) for c in cells]).encode())
    # and the values of the globals it reads: `S["lr"]` edited on the page, a helper beside fn edited
    scope = getattr(fn, "__globals__", None)
    if scope is not None:
        _busy = _busy | {id(fn)}
        seen = []
        for name in sorted(_global_names(code)):
            if name not in scope:
                continue                              # a builtin, an attribute name, a name not yet assigned
            value = scope[name]
            if isinstance(value, (types.ModuleType, type)) or id(value) in _busy:
                continue
            if isinstance(value, (types.FunctionType, functools.partial)):
                target = value.func if isinstance(value, functools.partial) else value
                if getattr(target, "__module__", None) != getattr(fn, "__module__", None):
                    continue                          # the package's or a library's function: keyed elsewhere
                seen.append((name, _fingerprint(value, _busy)))
            elif isinstance(value, (types.BuiltinFunctionType, types.MethodType)):
                continue                              # a builtin, or a method: its object is not what fn reads
            else:
                try:                                  # data by value; objects (a model, a run) by their type only
                    seen.append((name, _stable_repr(value, objects=False)))
                except Exception:                     # noqa: BLE001 -- a repr that fails: its type stands for it
                    seen.append((name, type(value).__qualname__))
        h.update(repr(seen).encode())
    return h.hexdigest()[:16]


def replicate(fn: Callable[[int], dict], seeds: int | Iterable[int] = 5, *, name: str, config: dict,
              version: str | int | None = None, progress: bool = True) -> Replication:
    """Run ``fn(seed)`` for every seed (``seeds``: a count, meaning seeds ``0..seeds-1``, or a list), each run cached
    on its own under ``name`` with ``config`` + the seed (:func:`slt_companion.cache.cached`: adding a seed computes
    only that seed), and return a :class:`Replication`. Every row must have the same keys.

    The cache key also holds a fingerprint of ``fn``'s own code (:func:`code_fingerprint`: its bytecode, names,
    constants, defaults, captured values and the globals it reads, helpers defined beside it included, not its line
    numbers), so editing ``fn``'s body, a setting it reads or a helper it calls recomputes. The package's code is
    not fingerprinted: it keys every entry already (:mod:`slt_companion.cache`). ``config`` must describe what else
    ``fn`` depends on besides the seed (a captured model's weights, for one); bump ``version`` to recompute by hand."""
    from tqdm.auto import tqdm

    from . import cache

    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(seed) -> dict, got {type(fn).__name__}")
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string (the cache entry's name)")
    if version is not None and not isinstance(version, (str, int)):
        raise TypeError(f"version must be a string or an integer (bump it when code fn calls changes), got {version!r}")
    seed_list = _seeds(seeds)
    code = code_fingerprint(fn)
    rows = []
    for seed in tqdm(seed_list, desc=f"replicate {name}", disable=not progress):
        def compute(seed=seed):
            out = fn(seed)
            if not isinstance(out, dict):
                raise TypeError(f"fn({seed}) returned {type(out).__name__}; it must return a dict of claims and numbers")
            if "seed" in map(str, out):
                raise ValueError(f"fn({seed}) returned a key 'seed', which is the row's own: rename it")
            return {str(k): _plain(str(k), v) for k, v in out.items()}
        got = cache.cached(f"replicate-{name}", {"config": config, "seed": seed, "code": code, "version": version},
                           compute)
        rows.append({"seed": seed, **{k: _plain(k, v) for k, v in got.items()}})
    keys = [k for k in rows[0] if k != "seed"]
    for r in rows[1:]:
        if set(r) != set(rows[0]):
            raise ValueError(f"fn(seed) returned different keys for seed {r['seed']} than for seed {rows[0]['seed']}: "
                             f"{sorted(set(r) ^ set(rows[0]))}")
    rows = [{"seed": r["seed"], **{k: r[k] for k in keys}} for r in rows]      # one key order: the first row's
    claims = [k for k in keys if all(isinstance(r[k], bool) for r in rows)]
    nums = [k for k in keys if k not in claims]
    return Replication(name=name, seeds=seed_list, rows=rows, claims=claims, numbers=nums)
