"""Registers the ``distributed`` marker: tests that spawn gloo process groups on this machine."""

from __future__ import annotations


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "distributed: spawns CPU (gloo) process groups; runs by default")
