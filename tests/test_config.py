"""slt_companion.config: quick mode, device selection and clear errors for unavailable devices."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from slt_companion import config


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("YES", True), ("on", True),
                                             ("0", False), ("", False), ("no", False)])
def test_quick_flag_values(monkeypatch, value, expected):
    monkeypatch.setenv("SLT_QUICK", value)
    assert config._flag("SLT_QUICK") is expected


def test_quick_is_read_at_import():
    code = "from slt_companion import config; print(config.QUICK, config.size('full', 'quick'))"
    for value, expected in (("1", "True quick"), ("0", "False full")):
        env = dict(os.environ, SLT_QUICK=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


def test_size_follows_quick(monkeypatch):
    monkeypatch.setattr(config, "QUICK", True)
    assert config.size(1000, 10) == 10
    monkeypatch.setattr(config, "QUICK", False)
    assert config.size(1000, 10) == 1000


def test_default_device_honours_override(monkeypatch):
    monkeypatch.setenv("SLT_DEVICE", "cpu")
    assert config.default_device() == torch.device("cpu")


def test_default_device_without_override_is_available(monkeypatch):
    monkeypatch.delenv("SLT_DEVICE", raising=False)
    dev = config.default_device()
    expected = "cuda" if torch.cuda.is_available() else dev.type
    assert dev.type == expected
    torch.zeros(1, device=dev)  # usable


def test_resolve_device_accepts_names_and_devices():
    assert config.resolve_device("cpu") == torch.device("cpu")
    assert config.resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_resolve_device_rejects_nonsense():
    with pytest.raises(ValueError, match="device='gpu please'"):
        config.resolve_device("gpu please")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_resolve_device_explains_missing_cuda():
    with pytest.raises(ValueError, match=r"cuda.*device='cpu'"):
        config.resolve_device("cuda")
