"""Hooks users implement in a conftest.py to change pytest-dsocr without forking it."""

import pluggy
import pytest

hookspec = pluggy.HookspecMarker("pytest")


@hookspec
def pytest_dsocr_update_metrics(config: pytest.Config, metrics: dict) -> None:
    """Add or change fields of metrics.json just before it is written (called on every write)."""
