"""What every test gets: the helpers' fixtures (tests/helpers), and a default store of the
test session's own, so that no command writes to the user's."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ("helpers.bundles", "helpers.devices", "helpers.fleet", "helpers.sshd", "helpers.reportfleet",
                  "helpers.tflitekit", "helpers.lmkit")


@pytest.fixture(scope="session", autouse=True)
def _own_default_store(tmp_path_factory):
    """Commands run without --store write to a store of this test session, never the user's."""
    os.environ["EDGEKIT_STORE"] = str(tmp_path_factory.mktemp("default-store") / "edgekit.db")


@pytest.fixture
def edgekit():
    from helpers.cli import run_edgekit

    return run_edgekit
