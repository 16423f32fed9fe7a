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
        cache.cached("demo", {"x": 2}, lambda: {"a": np.array([object()])})
    with pytest.raises(TypeError, match="cannot store"):
        cache.cached("demo", {"x": 3}, lambda: {"a": {1, 2}})


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
