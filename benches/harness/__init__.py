"""Helpers for benches/compare.py: server processes, wrk runs, idle connections, reports."""
