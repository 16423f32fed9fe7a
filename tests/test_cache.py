"""slt_companion.cache: round trips, keys that change with config and version, corrupt entries recomputed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slt_companion import cache


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLT_CACHE_DIR", str(tmp_path / "cache"))


def _result():
    return {"lam": 0.5, "n": 3, "name": "rrr", "flag": True, "none": None, "list": [1, 2.5],
            "arr": np.arange(6.0).reshape(2, 3), "t": torch.tensor([1.0, 2.0]),
            "nested": {"inner": np.array([1, 2], dtype=np.int64), "deeper": {"x": 1.5}}}


def test_round_trip_keeps_types_and_values():
    calls = []

    def compute():
        calls.append(1)
        return _result()

    first = cache.cached("demo", {"a": 1}, compute)
    second = cache.cached("demo", {"a": 1}, compute)
    assert len(calls) == 1, "second call must load, not recompute"
    assert second["lam"] == 0.5 and second["n"] == 3 and second["name"] == "rrr"
    assert second["flag"] is True and second["none"] is None and second["list"] == [1, 2.5]
    np.testing.assert_array_equal(second["arr"], first["arr"])
    assert isinstance(second["t"], torch.Tensor) and torch.equal(second["t"], torch.tensor([1.0, 2.0]))
    np.testing.assert_array_equal(second["nested"]["inner"], [1, 2])
    assert second["nested"]["deeper"]["x"] == 1.5


def test_key_changes_with_config_name_and_version(monkeypatch):
    base = cache.cache_key("demo", {"a": 1, "b": [1, 2]})
    assert cache.cache_key("demo", {"b": [1, 2], "a": 1}) == base  # order-independent
    assert cache.cache_key("demo", {"a": 2, "b": [1, 2]}) != base
    assert cache.cache_key("demo", {"a": 1.0, "b": [1, 2]}) != base  # 1 and 1.0 are different configs
    # values of different types never share a key: a float and its repr, an int key and its string, nan and "nan"
    for a, b in (({"a": 1.0}, {"a": "1.0"}), ({1: "x"}, {"1": "x"}), ({"a": float("nan")}, {"a": "nan"}),
                 ({"a": {"float": "1.0"}}, {"a": 1.0}), ({"a": [1, 2]}, {"a": {"1": 2}})):
        assert cache.cache_key("demo", a) != cache.cache_key("demo", b), (a, b)
    assert cache.cache_key("demo", {"x": {"b": 1, "a": 2}}) == cache.cache_key("demo", {"x": {"a": 2, "b": 1}})
    assert cache.cache_key("other", {"a": 1, "b": [1, 2]}) != base
    monkeypatch.setattr(cache, "__version__", "999.0")
    assert cache.cache_key("demo", {"a": 1, "b": [1, 2]}) != base


def test_corrupt_entry_is_recomputed_with_a_warning():
    cache.cached("demo", {"a": 1}, _result)
    path = cache.entry_path("demo", {"a": 1})
    path.write_bytes(path.read_bytes()[:40])  # truncate
    with pytest.warns(RuntimeWarning, match="corrupt"):
        again = cache.cached("demo", {"a": 1}, lambda: {"lam": 0.75})
    assert again == {"lam": 0.75}
    assert cache.load(path) == {"lam": 0.75}, "the recomputed result replaces the corrupt entry"


def test_refresh_recomputes():
    cache.cached("demo", {}, lambda: {"v": 1})
    assert cache.cached("demo", {}, lambda: {"v": 2}, refresh=True) == {"v": 2}
    assert cache.cached("demo", {}, lambda: {"v": 3}) == {"v": 2}


def test_bad_inputs_are_named():
    with pytest.raises(TypeError, match="config value"):
        cache.cache_key("demo", {"f": lambda: 1})
    with pytest.raises(TypeError, match="config must be a dict"):
        cache.cache_key("demo", [1, 2])
    with pytest.raises(TypeError, match="must return a dict"):
        cache.cached("demo", {"x": 1}, lambda: [1, 2])
    with pytest.raises(TypeError, match="object array"):
        cache.save(cache.entry_path("demo", {"x": 2}), {"a": np.array([object()])})
    # a result the cache cannot store is returned all the same, with a warning saying why (computations are costly)
    for config, result, why in [({"x": 2}, {"a": np.array([object()])}, "object array"),
                                ({"x": 3}, {"a": {1, 2}}, "cannot store"),
                                ({"x": 4}, {"a": {1: 2}}, "keys must be strings"),
                                ({"x": 5}, {"a": torch.ones(2, dtype=torch.bfloat16)}, "bfloat16 tensor"),
                                ({"x": 6}, {"a": [torch.ones(2)]}, "not plain numbers")]:
        with pytest.warns(RuntimeWarning, match=f"could not store the result of 'demo'.*{why}.*returning it uncached"):
            assert cache.cached("demo", config, lambda: result) is result
        assert not cache.entry_path("demo", config).exists()


def test_numpy_scalars_in_lists_are_stored_as_python_numbers():
    out = {"ints": list(np.arange(3)), "floats": (np.float32(0.5), [np.float64(1.5), np.bool_(True)])}
    cache.cached("demo", {}, lambda: out)
    again = cache.cached("demo", {}, lambda: {})
    assert again == {"ints": [0, 1, 2], "floats": [0.5, [1.5, True]]}
    assert type(again["ints"][0]) is int and type(again["floats"][1][1]) is bool


def test_no_temporary_files_left_behind():
    cache.cached("demo", {"a": 1}, _result)
    leftovers = [p for p in cache.cache_dir().iterdir() if p.suffix == ".tmp"]
    assert not leftovers


def test_quick_mode_is_part_of_the_key(monkeypatch):
    from slt_companion import config

    monkeypatch.setattr(config, "QUICK", False)
    full = cache.cache_key("demo", {"a": 1})
    monkeypatch.setattr(config, "QUICK", True)
    assert cache.cache_key("demo", {"a": 1}) != full


def test_package_source_is_part_of_the_key(monkeypatch):
    base = cache.cache_key("demo", {"a": 1})
    monkeypatch.setattr(cache, "package_fingerprint", lambda: "edited")
    assert cache.cache_key("demo", {"a": 1}) != base


# ---- issue 20: the cache never loses a finished computation, and malformed entries are recomputed ------------
def test_unwritable_cache_warns_and_returns_the_result(tmp_path, monkeypatch):
    # issue 20.5: a finished computation was discarded when the cache could not be written
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SLT_CACHE_DIR", str(blocker / "cache"))          # uncreatable (works as root too)
    with pytest.warns(RuntimeWarning, match="could not store the result of 'demo'.*SLT_CACHE_DIR"):
        out = cache.cached("demo", {"a": 1}, lambda: {"lam": 0.5, "arr": np.arange(3)})
    assert out["lam"] == 0.5 and out["arr"].tolist() == [0, 1, 2]
    monkeypatch.setattr(cache.os, "replace", _raise_permission)             # a read-only folder: the rename fails
    monkeypatch.setenv("SLT_CACHE_DIR", str(tmp_path / "ro"))
    with pytest.warns(RuntimeWarning, match="PermissionError"):
        assert cache.cached("demo", {"a": 1}, lambda: {"lam": 0.25}) == {"lam": 0.25}
    assert not list((tmp_path / "ro").iterdir())                           # and no temporary file is left


def _raise_permission(*args):
    raise PermissionError(13, "Read-only file system")


def test_any_result_key_round_trips():
    # issue 20.5: a key named `file` made np.savez fail; `allow_pickle` was swallowed by it and never stored
    res = {"file": np.arange(3), "allow_pickle": torch.tensor([1.0]), "__meta__": 2, "a0": np.ones(2),
           "nested": {"file": 1.5, "kwds": np.zeros(1)}}
    cache.cached("demo", {"k": 1}, lambda: res)
    back = cache.cached("demo", {"k": 1}, lambda: pytest.fail("must load, not recompute"))
    assert back["file"].tolist() == [0, 1, 2] and torch.equal(back["allow_pickle"], torch.tensor([1.0]))
    assert back["__meta__"] == 2 and back["a0"].tolist() == [1.0, 1.0]
    assert back["nested"]["file"] == 1.5 and back["nested"]["kwds"].tolist() == [0.0]


@pytest.mark.parametrize("meta", ["{}", "[]", "5", '"text"', '{"lam": {"kind": "value"}}',
                                  '{"format": 2, "entries": {"lam": {"kind": "value"}}}',
                                  '{"format": 2, "entries": {"a/b": {"kind": "value", "value": 1}}}',
                                  '{"format": 2, "entries": {"lam": 5}}',
                                  '{"format": 2, "entries": {"t": {"kind": "tensor", "array": "a9"}}}',
                                  '{"format": 2, "entries": {"a": {"kind": "value", "value": 1}, '
                                  '"a/b": {"kind": "value", "value": 2}}}'])
def test_malformed_metadata_is_a_corrupt_entry(meta):
    # issue 20.6: malformed metadata returned {} or raised KeyError/TypeError instead of being recomputed
    path = cache.entry_path("demo", {"m": 1})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, __meta__=np.array(meta))
    with pytest.raises(ValueError, match="corrupt"):
        cache.load(path)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert cache.cached("demo", {"m": 1}, lambda: {"lam": 0.75}) == {"lam": 0.75}
    assert cache.load(path) == {"lam": 0.75}
    assert cache.cached("demo", {"e": 1}, dict) == {}                        # an empty result is not corrupt
    assert cache.cached("demo", {"e": 1}, lambda: pytest.fail("must load")) == {}


def test_a_killed_write_leaves_no_temporary_file_behind():
    # issue 20.8: a write killed mid-way left a stray .tmp in the cache folder for ever
    import subprocess
    import sys

    child = ("import os, numpy as np\n"
             "from slt_companion import cache\n"
             "np.savez = lambda fh, **kw: (fh.write(b'partial'), fh.flush(), os._exit(9))\n"
             "cache.cached('demo', {'k': 1}, lambda: {'x': np.ones(3)})\n")
    assert subprocess.run([sys.executable, "-c", child], timeout=120).returncode == 9
    folder = cache.cache_dir()
    assert [p for p in folder.iterdir() if p.name.endswith(".tmp")]         # the killed writer left one
    assert cache.cached("demo", {"k": 1}, lambda: {"x": 2})["x"] == 2
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def _slow_counted(marker: str, delay: float):
    """A compute that records each call in ``marker`` (one line per call) and takes ``delay`` seconds."""
    import time

    def compute():
        with open(marker, "a") as fh:
            fh.write("call\n")
        time.sleep(delay)
        return {"v": 7}
    return compute


def _cached_in_child(cache_dir: str, marker: str, out: str):
    import os

    os.environ["SLT_CACHE_DIR"] = cache_dir
    from slt_companion import cache as c

    res = c.cached("shared", {"k": 1}, _slow_counted(marker, 4.0))   # long enough to overlap
    with open(out, "w") as fh:
        fh.write(str(res["v"]))


def test_two_processes_compute_one_entry_once(tmp_path):
    """Two processes asking for one entry at once: one computes, the other waits and loads it."""
    import multiprocessing as mp

    marker = tmp_path / "calls.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_cached_in_child, args=(str(tmp_path / "cache"), str(marker), str(tmp_path / f"out{i}")))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert marker.read_text().count("call") == 1
    assert [(tmp_path / f"out{i}").read_text() for i in range(2)] == ["7", "7"]
    assert not list((tmp_path / "cache").glob("*.lock"))          # the lock is gone afterwards


def test_stale_lock_of_a_dead_process_is_removed(tmp_path):
    """A lock left by a process that no longer exists does not block: it is removed and the entry computed."""
    import socket

    path = cache.entry_path("demo", {"s": 1})
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    lock.write_text(f"{socket.gethostname()} 999999999")        # no such pid
    assert cache.cached("demo", {"s": 1}, lambda: {"v": 1}) == {"v": 1}
    assert not lock.exists()


def test_lock_released_when_compute_fails(tmp_path):
    path = cache.entry_path("demo", {"f": 1})

    def boom():
        raise RuntimeError("compute failed")
    with pytest.raises(RuntimeError, match="compute failed"):
        cache.cached("demo", {"f": 1}, boom)
    assert not path.with_name(path.name + ".lock").exists()
    assert cache.cached("demo", {"f": 1}, lambda: {"v": 2}) == {"v": 2}


def test_a_corrupt_entry_reached_through_the_package_is_reported_at_the_callers_line(tmp_path):
    """The warning named cache.py's caller inside the package (train.py), not the reader's line."""
    import warnings

    from slt_companion.train import train

    def run():
        torch.manual_seed(0)
        net = torch.nn.Linear(2, 1)
        x, y = torch.randn(16, 2), torch.randn(16, 1)
        return train(net, torch.nn.functional.mse_loss, lambda step: (x, y), num_steps=3, lr=0.1, progress=False,
                     cache_name="corrupt-demo")

    run()
    entries = [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith("corrupt-demo-")]
    assert entries
    for p in entries:
        p.write_bytes(p.read_bytes()[:40])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    corrupt = [w for w in caught if "corrupt" in str(w.message)]
    assert corrupt and all(w.filename == __file__ for w in corrupt), [(w.filename, w.lineno, str(w.message)) for w in corrupt]


def test_an_entry_its_check_finds_wrong_is_recomputed_with_a_warning():
    calls = []

    def compute():
        calls.append(1)
        return {"a": np.arange(len(calls) + 1)}

    check = lambda entry: None if len(entry["a"]) == 3 else f"a of length {len(entry['a'])}"   # noqa: E731
    cache.cached("checked", {}, compute)                              # stores a of length 2
    with pytest.warns(RuntimeWarning, match=r"cache entry .*checked-.* is corrupt \(a of length 2\); recomputing"):
        out = cache.cached("checked", {}, compute, check=check)
    assert len(out["a"]) == 3 and len(calls) == 2
    assert len(cache.cached("checked", {}, compute, check=check)["a"]) == 3 and len(calls) == 2   # now served
