"""The whole OCI conformance suite (tests/test_conformance.py, every spec, unchanged) against a
scaled root: two replicas on PostgreSQL and S3 (`rclone serve s3`), behind nginx without
stickiness.

The specs are imported, so pytest collects each of them here a second time; this module's own
`reg` fixture (which pytest prefers for tests collected here) points them at the balancer.
One variant only, the token-auth one: it also proves that a token issued by one replica is
honoured by the other (the signing key is shared) — the open variant adds nothing a replica
could get wrong, and CI time is scarce.
"""

from __future__ import annotations

import secrets

import pytest

import test_conformance as conformance
from test_conformance import *  # noqa: F401,F403 - every spec, collected again here

from connreg.testing.replicas import start_scaled_root


@pytest.fixture(scope="module")
def reg(tmp_path_factory, postgres_server, s3_store_server):
    root = start_scaled_root(tmp_path_factory.mktemp("conformance-replicas"),
                             postgres_server.create_database("conformance_replicas"),
                             blob_store=s3_store_server.url("conformance"),
                             env={"CONNREG_ADMIN_PASSWORD": secrets.token_urlsafe(18),
                                  **s3_store_server.env()})
    conformance.D.__init__()
    conformance.S.__init__()
    r = conformance.Registry(root.url, root.admin)
    r.mode = conformance.TOKEN_AUTH
    r.automatic_crossmount = conformance.AUTOMATIC_CROSSMOUNT_ENABLED
    yield r
    r.close()
    root.stop()
