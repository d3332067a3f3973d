"""A cluster of test hosts for the whole module, always torn down.

Skipped, with the reason, where network namespaces cannot be made (not Linux, no iproute2,
not root); with ``REQUIRE_NETNS=1`` (CI) that is a failure instead, so the cluster test can
never silently stop running.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.cluster import netns
from tests.cluster.cluster import Cluster


@pytest.fixture(scope="session")
def netns_available() -> None:
    try:
        netns.probe()
        return
    except netns.NetnsUnavailable as exc:
        reason = str(exc)
    if os.environ.get("REQUIRE_NETNS") == "1":
        pytest.fail(f"REQUIRE_NETNS=1 but {reason}", pytrace=False)
    pytest.skip(f"multi-host cluster test skipped: {reason}")


@pytest.fixture(scope="module")
def cluster(netns_available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    netns.remove_leftovers()
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.up()
        yield c
    finally:
        c.down()


@pytest.fixture
def on_client(cluster: Cluster) -> Iterator[Cluster]:
    """The test's thread works from the client host (and only during the test), on a
    cluster with every host up."""
    with cluster.from_client():
        cluster.repair()
        yield cluster
