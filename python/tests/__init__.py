"""Tests of the `fastserve` Python package (python/fastserve)."""
