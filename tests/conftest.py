"""Fixtures shared by the plugin's own tests."""

import pytest


@pytest.fixture(scope="session")
def inference_modules_loaded():
    """Import everything one inference imports, once, in this process.

    pytester's in-process runs remove the modules first imported inside them, and some of
    torch's cannot be imported twice (operator registrations). One tiny inference here puts
    them in the outer process before any in-process run.
    """
    import torch

    from pytest_dsocr.config import load_config
    from pytest_dsocr.data.pages import bundled_pages
    from pytest_dsocr.decoding import DecodePolicy
    from pytest_dsocr.engine import Engine
    from pytest_dsocr.records import Sample
    from pytest_dsocr.session import build_adapter

    adapter = build_adapter(load_config(), torch.device("cpu"), torch.float32)
    page = min(bundled_pages(), key=lambda p: p.stat().st_size)
    Engine(adapter, DecodePolicy(eos_token_id=adapter.eos_token_id), 1).run(Sample(page, 0, 0, page.stem))


def pytest_configure(config):
    # GPU-only tests carry this marker and skip themselves without CUDA.
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
