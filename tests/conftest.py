"""Test-suite set-up shared by every test module."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# CI runs every property test on the same examples (a failure there reproduces locally with
# CI=true); elsewhere Hypothesis draws new ones each run, which finds more.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

try:
    from fheprune import _core
except ImportError:  # the engine is not built: the modules that need it skip themselves
    _core = None

# The tests use toy ring sizes (N = 1024, insecure by construction) and pass them through
# program files and client specs, which a normal process refuses to load: opt this test process
# in. Tests of the refusal switch it off with the `refuse_insecure_files` fixture.
if _core is not None:
    _core.allow_insecure_parameter_files(True)


@pytest.fixture
def refuse_insecure_files():  # type: ignore[no-untyped-def]
    """Within the test, insecure parameter files are refused (a deployment's default)."""
    assert _core is not None
    _core.allow_insecure_parameter_files(False)
    yield
    _core.allow_insecure_parameter_files(True)
