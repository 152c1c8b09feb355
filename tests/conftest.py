"""Shared test setup: make the flat top-level modules importable; the fixture that routes
model.py's flash call sites to the pure-PyTorch stand-ins; the code sandbox, jailed and not,
with a check that nothing it ran is left behind; a private `datasets` cache."""
import os
import signal
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from support import sandbox, workers  # noqa: E402  (after the path)


@pytest.fixture
def flash_standin_backend(monkeypatch):
    """Route model.py's flash-attn and torch varlen_attn call sites to the pure-PyTorch stand-ins."""
    import model as M
    from tests import flash_standin
    monkeypatch.setattr(M, "flash_attn_varlen_func", flash_standin.flash_attn_varlen_func)
    monkeypatch.setattr(M, "flash_attn_with_kvcache", flash_standin.flash_attn_with_kvcache)
    monkeypatch.setattr(M, "varlen_attn", flash_standin.varlen_attn)


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    """`datasets` converts each parquet file it reads into a cache; keep the tests' out of ~/.cache."""
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))


@pytest.fixture(params=["jail", "no_jail"])
def sandbox_root(request, tmp_path, monkeypatch):
    """Pick the jail or the unjailed fallback, and make the sandbox create its temporary
    directories under our own folder, so we can find any process still running in one (by
    its cwd) and any directory left behind."""
    if request.param == "no_jail":
        monkeypatch.setattr(sandbox, "_jail_state", False)
    elif not sandbox.jail_works():
        pytest.skip("bubblewrap (bwrap) cannot jail on this machine")
    root = tmp_path / "sandboxes"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    before = set(_children())  # e.g. multiprocessing's resource tracker, left by earlier tests
    yield root
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:  # gone, or a zombie
            continue
        if cwd.startswith(str(root)):
            leftovers.append(pid)
    for pid in leftovers:  # do not let a failing test leak processes into the session
        os.kill(int(pid), signal.SIGKILL)
    assert leftovers == [], "sandboxed processes still running"
    assert list(root.iterdir()) == [], "temporary directories left behind"
    assert sorted(set(_children()) - before) == [], "child processes still running"


def _children() -> list[int]:
    """Our child processes, other than the (trusted, long-lived) grader workers (support/workers.py)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and workers.MARKER.encode() not in cmdline:
            found.append(int(pid))
    return found
