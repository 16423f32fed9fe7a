"""replicate(): one cached run per seed, claims counted, numbers spread."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from slt_companion.replicate import Replication, replicate  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLT_CACHE_DIR", str(tmp_path / "cache"))


class Calls(list):
    """The seeds fn ran for. Its repr holds an address, so a closure capturing it keeps one fingerprint as it grows
    (a plain list would be hashed by value: :func:`code_fingerprint`)."""

    __repr__ = object.__repr__


def experiment(calls):
    def fn(seed):
        calls.append(seed)
        rng = np.random.default_rng(seed)
        boundary = float(100 + 10 * rng.standard_normal())
        return {"has_stage": seed != 3, "boundary": boundary, "count": np.int64(seed * 2),
                "llc": np.float32(1.5) if seed else math.nan}
    return fn


def test_claims_and_numbers_are_counted_and_spread():
    calls = Calls()
    rep = replicate(experiment(calls), 5, name="toy", config={"v": 1}, progress=False)
    assert rep.seeds == [0, 1, 2, 3, 4] and calls == [0, 1, 2, 3, 4]
    assert rep.claims == ["has_stage"] and rep.numbers == ["boundary", "count", "llc"]
    assert rep.holds("has_stage") == 4 and rep.fraction("has_stage") == 0.8
    assert rep.replicates("has_stage") and not rep.replicates("has_stage", at_least=1.0)
    assert rep.verdict("has_stage") == "4 of 5 seeds"
    s = rep.spread("llc")                     # the NaN of seed 0 is left out
    assert s["n"] == 4 and s["mean"] == pytest.approx(1.5) and s["sd"] == 0
    assert rep.values("count").tolist() == [0, 2, 4, 6, 8]
    assert "| has_stage | 4 of 5 seeds | yes |" in rep.claims_table()
    table = rep.numbers_table().splitlines()
    assert table[-1].startswith("| **mean ± sd** |") and table[-1].endswith("| 1.5 ± 0 (4 of 5) |")
    assert table[2].endswith("| 0 | — |")                           # seed 0 measured no llc: a dash, not "nan"
    big = Replication(name="b", seeds=[0, 1], rows=[{"seed": 0, "step": 1880.0, "rhat": 1.0123},
                                                    {"seed": 1, "step": 2140.0, "rhat": 1.0}],
                      numbers=["step", "rhat"])
    lines = big.numbers_table(fmt={"rhat": ".3f"}).splitlines()
    assert lines[2] == "| 0 | 1,880 | 1.012 |" and lines[3] == "| 1 | 2,140 | 1.000 |"     # no 1.88e+03
    assert lines[4] == "| **mean ± sd** | 2,010 ± 184 | 1.006 ± 0.009 |"
    assert len(rep.plot(["boundary", "count"], reference={"boundary": 100.0})) == 2
    with pytest.raises(KeyError, match="not a claim"):
        rep.holds("boundary")


def test_each_seed_is_cached_on_its_own():
    calls = Calls()
    replicate(experiment(calls), [0, 1], name="toy", config={"v": 1}, progress=False)
    rep = replicate(experiment(calls), [0, 1, 2], name="toy", config={"v": 1}, progress=False)
    assert calls == [0, 1, 2]                 # seeds 0 and 1 came from the cache
    assert [r["seed"] for r in rep.rows] == [0, 1, 2]
    replicate(experiment(calls), [0], name="toy", config={"v": 2}, progress=False)
    assert calls == [0, 1, 2, 0]              # another config: computed again
    again = replicate(experiment(Calls()), [0, 1, 2], name="toy", config={"v": 1}, progress=False)
    assert again.rows == rep.rows and isinstance(again.rows[0]["has_stage"], bool)


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="must return a dict"):
        replicate(lambda s: [s], 2, name="bad", config={}, progress=False)
    with pytest.raises(TypeError, match="'curve'"):
        replicate(lambda s: {"curve": np.zeros(3)}, 2, name="bad2", config={}, progress=False)
    with pytest.raises(ValueError, match="different keys"):
        replicate(lambda s: {"a": 1.0} if s == 0 else {"b": 1.0}, 2, name="bad3", config={}, progress=False)
    with pytest.raises(ValueError, match="distinct"):
        replicate(lambda s: {"a": 1.0}, [1, 1], name="bad4", config={}, progress=False)
    with pytest.raises(ValueError, match="seeds"):
        replicate(lambda s: {"a": 1.0}, 0, name="bad5", config={}, progress=False)
    with pytest.raises(ValueError, match="seeds is empty"):
        replicate(lambda s: {"a": 1.0}, [], name="bad6", config={}, progress=False)
    assert isinstance(replicate(lambda s: {"a": 1.0}, 1, name="ok", config={}, progress=False), Replication)


def test_editing_fn_recomputes_and_moving_it_does_not():
    calls = Calls()
    src = "def fn(seed):\n    calls.append(seed)\n    return {'x': float(seed) * SCALE}\n"
    ns = {"calls": calls, "SCALE": 1.0}
    exec(compile(src, "<cell 1>", "exec"), ns)
    replicate(ns["fn"], 2, name="edit", config={}, progress=False)
    moved = {"calls": calls, "SCALE": 1.0}            # the same body, another file and line: from the cache
    exec(compile("\n\n\n" + src, "<cell 7>", "exec"), moved)
    assert replicate(moved["fn"], 2, name="edit", config={}, progress=False).values("x").tolist() == [0.0, 1.0]
    assert calls == [0, 1]
    edited = {"calls": calls}
    exec(compile(src.replace("float(seed) * SCALE", "float(seed) * 3.0"), "<cell 1>", "exec"), edited)
    assert replicate(edited["fn"], 2, name="edit", config={}, progress=False).values("x").tolist() == [0.0, 3.0]
    assert calls == [0, 1, 0, 1]
    # a global fn reads is part of what it computes: SCALE edited on the page recomputes, no version needed
    moved["SCALE"] = 2.0
    assert replicate(moved["fn"], 2, name="edit", config={}, progress=False).values("x").tolist() == [0.0, 2.0]
    assert calls == [0, 1, 0, 1, 0, 1]
    assert replicate(moved["fn"], 2, name="edit", config={}, version=2,
                     progress=False).values("x").tolist() == [0.0, 2.0]
    with pytest.raises(TypeError, match="version"):
        replicate(moved["fn"], 2, name="edit", config={}, version=[1], progress=False)


def test_globals_and_helpers_beside_fn_are_fingerprinted():
    import subprocess
    import sys
    import types

    from slt_companion.replicate import code_fingerprint

    src = ("import math\nfrom slt_companion.replicate import value_range\n"
           "S = {'lr': 1e-3, 'sizes': [2, 3]}\n"
           "def helper(x):\n    return x * S['lr'] + (helper(x - 1) if x > 5 else 0) + other(x)\n"
           "def other(x):\n    return helper(x) if x > 9 else math.sqrt(x)\n"
           "def fn(seed):\n    return {'x': helper(seed), 'r': value_range([seed, 1.0]), 'n': len(RUN.rows)}\n")
    ns: dict = {"RUN": types.SimpleNamespace(rows=[1], seconds=1.5)}
    exec(compile(src, "<page>", "exec"), ns)
    first = code_fingerprint(ns["fn"])                 # helpers that call each other: hashed once, no recursion
    ns["RUN"] = types.SimpleNamespace(rows=[1], seconds=2.5)      # an object (here holding a wall time): its type only
    assert code_fingerprint(ns["fn"]) == first
    ns["S"]["sizes"].append(4)                         # a global the helper reads, edited in place
    assert code_fingerprint(ns["fn"]) != first
    ns["S"]["sizes"].pop()
    assert code_fingerprint(ns["fn"]) == first
    exec(compile(src.replace("math.sqrt(x)", "math.sqrt(x) + 1"), "<page>", "exec"), ns)   # a helper edited
    assert code_fingerprint(ns["fn"]) != first
    # the same page in other processes (other hash seeds, other addresses) fingerprints alike
    prog = ("import types\nRUN = types.SimpleNamespace(rows=[1])\n" + src.replace("[2, 3]", "{'a', 'b', 'c', 'd'}") +
            "from slt_companion.replicate import code_fingerprint\nprint(code_fingerprint(fn))")
    prints = {subprocess.run([sys.executable, "-c", prog], env={"PYTHONHASHSEED": str(h)}, capture_output=True,
                             text=True, check=True).stdout for h in (1, 2, 3)}
    assert len(prints) == 1 and prints != {"None\n"}


def test_fingerprint_of_partials_and_set_constants():
    import functools
    import subprocess
    import sys

    from slt_companion.replicate import code_fingerprint

    def fn(seed, k=1):
        return {"a": str(seed) in {"1", "2", "3"}, "k": k}

    assert code_fingerprint(functools.partial(fn, k=2)) != code_fingerprint(functools.partial(fn, k=3))
    assert code_fingerprint(print) is None

    def g(seed, scale=2.0):
        return {"x": scale * seed}
    before = code_fingerprint(g)
    g.__defaults__ = (3.0,)                            # the same code with another default computes something else
    assert code_fingerprint(g) != before
    g.__defaults__ = (object(),)                       # a default whose repr holds an address (which differs from
    first = code_fingerprint(g)                        # run to run): the fingerprint does not depend on it
    g.__defaults__ = (object(),)
    assert code_fingerprint(g) == first
    # a set literal's order depends on the hash seed; the fingerprint must not
    prog = ("from slt_companion.replicate import code_fingerprint\n"
            "def fn(seed):\n    return {'a': str(seed) in {'one', 'two', 'three', 'four'}}\n"
            "print(code_fingerprint(fn))")
    prints = {subprocess.run([sys.executable, "-c", prog], env={"PYTHONHASHSEED": str(h)}, capture_output=True,
                             text=True, check=True).stdout for h in (1, 2, 3)}
    assert len(prints) == 1


def test_closures_are_fingerprinted_by_the_values_they_capture():
    import time

    import torch

    from slt_companion.models import DeepLinearNetwork
    from slt_companion.replicate import code_fingerprint

    def make(k):
        def fn(seed):
            return {"x": float(seed * k)}
        return fn

    # the same code capturing another value is another function: no stale rows from the cache
    assert replicate(make(1), 2, name="cl", config={}, progress=False).values("x").tolist() == [0.0, 1.0]
    assert replicate(make(2), 2, name="cl", config={}, progress=False).values("x").tolist() == [0.0, 2.0]
    assert code_fingerprint(make(1)) == code_fingerprint(make(1))
    assert code_fingerprint(make({"lr": 1e-3})) != code_fingerprint(make({"lr": 1e-2}))
    big = torch.randn(2_500_000)                       # 10 MB: hashed by its bytes, not its (elided) repr
    changed = big.clone()
    changed[1_000_000] += 1
    start = time.perf_counter()
    assert code_fingerprint(make(big)) != code_fingerprint(make(changed))
    assert time.perf_counter() - start < 0.5
    assert code_fingerprint(make(np.arange(3))) != code_fingerprint(make(np.arange(1, 4)))
    assert code_fingerprint(make(torch.ones(2, dtype=torch.bfloat16))) is not None
    # a value without a stable repr (a function, an object) is not hashed, and does not fail; a model is hashed by
    # its repr (its layers, not its weights)
    assert code_fingerprint(make(lambda: 1)) == code_fingerprint(make(lambda: 2))
    assert code_fingerprint(make(object())) == code_fingerprint(make(object()))
    assert code_fingerprint(make(DeepLinearNetwork([2, 2], seed=0))) == code_fingerprint(
        make(DeepLinearNetwork([2, 2], seed=1)))

    def recursive():                                   # captures itself, and a name not yet assigned
        def fn(seed):
            return fn if seed else later
        fp = code_fingerprint(fn)
        later = 1
        return fp, later
    assert recursive()[0] is not None


def test_plot_labels_every_axis():
    rep = replicate(experiment([]), 3, name="toy", config={"v": 1}, progress=False)
    axes = rep.plot(["boundary", "count"], labels={"boundary": "boundary"}, ylabels={"boundary": "step"})
    assert [ax.get_ylabel() for ax in axes] == ["step", "count"]


def test_rows_keep_their_seed_and_accept_any_key_order():
    with pytest.raises(ValueError, match="key 'seed'"):
        replicate(lambda s: {"seed": 99, "x": 1.0}, [0, 1], name="seedkey", config={}, progress=False)
    rep = replicate(lambda s: {"a": 1.0, "b": True} if s else {"b": False, "a": 2.0}, [0, 1], name="order",
                    config={}, progress=False)
    assert [r["seed"] for r in rep.rows] == [0, 1] and [list(r) for r in rep.rows] == [["seed", "b", "a"]] * 2


def test_runs_phrase_names_the_seeds_in_the_chapters_words():
    from slt_companion.replicate import runs_phrase

    assert runs_phrase([{"seed": 3}]) == "the run with seed 3"
    assert runs_phrase([{"seed": 1, "x": 0}, {"seed": 4}]) == "the runs with seeds 1, 4"
    with pytest.raises(ValueError, match="rows is empty"):
        runs_phrase([])


def test_value_range_states_both_ends_or_the_one_value():
    """The chapters' ranges: 'lo–hi' at the given format, the one value (or `same`) when both ends read alike, NaN left
    out, and no finite value an error rather than 'nan–nan'."""
    from slt_companion.replicate import value_range

    assert value_range([0.314, 0.47, float("nan")], ".2f") == "0.31–0.47"
    assert value_range([3, 1, 2], ",", sep=" to ") == "1 to 3"
    assert value_range([0.801, 0.804], ".0%") == "80%"
    assert value_range([0.801, 0.804], ".0%", same="{} in every seed") == "80% in every seed"
    with pytest.raises(ValueError, match="no finite number"):
        value_range([float("nan")], ".1f")
    rep = replicate(lambda s: {"x": 0.1 * s}, [1, 2, 3], name="t-range", config={}, progress=False)
    assert rep.range_text("x", ".1f") == "0.1–0.3"


def test_a_captured_set_fingerprints_alike_in_every_process():
    """A set of strings iterates in another order under each PYTHONHASHSEED: its fingerprint must not (the cache
    would miss on every build); a list inside itself does not recurse forever."""
    import os
    import subprocess
    import sys

    code = ("from slt_companion.replicate import code_fingerprint\n"
            "def mk():\n    S = {'alpha', 'beta', 'gamma', 'delta', 'epsilon'}\n    return lambda s: len(S) + s\n"
            "print(code_fingerprint(mk()))")
    prints = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": str(h)}).stdout for h in (1, 2, 3)}
    assert len(prints) == 1
    from slt_companion.replicate import _stable_repr

    loop = [1]
    loop.append(loop)
    assert _stable_repr(loop) == "[1, ...]"
