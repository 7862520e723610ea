"""The skopeo tests (tests/test_skopeo.py, unchanged) against two replicas behind nginx: each
copy's requests are spread over both replicas (no stickiness), blobs uploaded in sessions that
one replica starts and the other finishes.
"""

from __future__ import annotations

import pytest

from test_skopeo import *  # noqa: F401,F403 - every skopeo test, collected again here

from connreg.testing.replicas import start_scaled_root


@pytest.fixture(scope="module")
def node(tmp_path_factory, postgres_server):
    """The balancer in front of two open replicas, in the place of test_skopeo's one node."""
    root = start_scaled_root(tmp_path_factory.mktemp("skopeo-replicas"),
                             postgres_server.create_database("skopeo_replicas"),
                             args=["--no-auth"])
    yield root
    root.stop()
