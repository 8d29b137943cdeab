"""Shared set-up for the tests of the `fastserve` Python package."""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Register the `slow` marker so `-m "not slow"` can leave those tests out."""
    config.addinivalue_line("markers", "slow: takes more than a minute (builds the wheel)")
