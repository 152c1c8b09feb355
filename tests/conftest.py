"""Shared test setup: make the flat top-level modules importable and keep runs reproducible;
the fixture that routes model.py's flash-attn call sites to the pure-PyTorch stand-ins."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def flash_standin_backend(monkeypatch):
    """Route model.py's flash-attn call sites to the pure-PyTorch stand-ins."""
    import model as M
    from tests import flash_standin
    monkeypatch.setattr(M, "flash_attn_varlen_func", flash_standin.flash_attn_varlen_func)
    monkeypatch.setattr(M, "flash_attn_with_kvcache", flash_standin.flash_attn_with_kvcache)
