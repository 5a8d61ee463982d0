"""The suite's own layout: the pytest-xdist groups of tests/conftest.py reach the scheduler."""

from __future__ import annotations

import pytest


def test_xdist_groups_reach_the_scheduler(request: pytest.FixtureRequest) -> None:
    """``--dist loadgroup`` reads a test's group from a suffix of its node id (``...@group``).
    pytest 9.2 ignores the way pytest-xdist 3.8 sets it (pytest-dev/pytest-xdist#1386): nothing
    fails, the groups silently fall apart and every process starts every service stack."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run under make test's pytest-xdist --dist loadgroup")
    assert request.node.nodeid.endswith("@test_suite_layout"), request.node.nodeid
