"""Shared fixtures: the embedding configurations every test sweeps, and a tiny XCiT factory."""

from __future__ import annotations

import gc
import ipaddress
import itertools
import os
import signal
import socket
import time
import warnings

import pytest
import timm
import torch

import qkv  # noqa: F401  (registers the qkv_xcit_* models)
from pipeline import procfs

LEFT_GRACE_S = 10.0  # for a test's processes to end after its objects are collected


def _option_sets() -> list[dict]:
    """Every embedding kind with every value of each of its options (one option varied at a time around
    the defaults, plus the full product of the fsne code options)."""
    sets = [dict(qkv_embed="linear"), dict(qkv_embed="linear", qkv_bias=False)]
    for kind in ("sne", "psne"):
        sets += [
            dict(qkv_embed=kind),
            dict(qkv_embed=kind, qkv_bias=False),
            dict(qkv_embed=kind, qkv_norm=True),
            dict(qkv_embed=kind, qkv_hidden=20),
            dict(qkv_embed=kind, qkv_hidden_ratio=1.0),
        ]
    sets += [dict(qkv_embed="psne", qkv_shared="second"), dict(qkv_embed="psne", qkv_shared="second", qkv_norm=True)]
    for mode, scope, init in itertools.product(("concat", "add", "gate"), ("block", "global"), ("onehot", "normal")):
        sets.append(dict(qkv_embed="fsne", qkv_code_mode=mode, qkv_code_scope=scope, qkv_code_init=init))
    sets += [
        dict(qkv_embed="fsne", qkv_code_mode=mode, qkv_norm=True, qkv_bias=False) for mode in ("concat", "add", "gate")
    ]
    sets += [dict(qkv_embed="fsne", qkv_code_dim=7, qkv_code_scale=0.5, qkv_hidden=40)]
    return sets


OPTION_SETS = _option_sets()


def option_id(options: dict) -> str:
    return "-".join(f"{k.removeprefix('qkv_')}={v}" for k, v in options.items())


@pytest.fixture(params=OPTION_SETS, ids=option_id)
def options(request) -> dict:
    return dict(request.param)


def tiny_xcit(options: dict, *, num_classes: int = 5, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A small XCiT (dim 32, 2 blocks, 32-px input, 16 tokens) with the given qkv_* options."""
    torch.manual_seed(seed)
    args = dict(embed_dim=32, depth=2, num_heads=4, img_size=32, num_classes=num_classes)
    return timm.create_model("qkv_xcit_nano_12_p8", **{**args, **kwargs}, **options)


_connect = socket.socket.connect


def _loopback_only(self, address):
    """Tests may talk to this machine (torchrun's rendezvous on localhost), never to the network."""
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            local = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = False
        if not local:
            raise OSError(f"test attempted a network connection to {address!r}")
    return _connect(self, address)


@pytest.fixture(autouse=True)
def no_background_git(monkeypatch):
    """The tests' scratch repositories never start git's automatic gc or maintenance: git runs them detached, so
    they would outlive the test that committed (beyond the reach of its process check) and load the machine."""
    monkeypatch.setenv("GIT_CONFIG_COUNT", "2")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "gc.auto")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "0")
    monkeypatch.setenv("GIT_CONFIG_KEY_1", "maintenance.auto")
    monkeypatch.setenv("GIT_CONFIG_VALUE_1", "false")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test runs with connections outside loopback refused, so an accidental download fails loudly."""
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)


@pytest.fixture(autouse=True)
def no_process_left_running():
    """A test reaps what it starts. A child process still running when a test ends (after the garbage its objects
    left is collected: a DataLoader iterator in a reference cycle shuts its workers down only then, and they get
    LEFT_GRACE_S to end) is killed here and fails that test, naming it; left alone it would run on (a job surviving
    its cancel) and fail a later, unrelated test through the ResourceWarning of its Popen object."""
    yield
    if not procfs.children(os.getpid()):
        return
    gc.collect()
    deadline = time.monotonic() + LEFT_GRACE_S
    while (left := procfs.children(os.getpid())) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not left:
        return
    names = [" ".join(procfs.argv(pid))[:120] for pid in left]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    with warnings.catch_warnings():  # the test's Popen objects, now unreferenced, go without their ResourceWarning
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    pytest.fail(f"the test left {len(left)} process(es) running: {names}")
