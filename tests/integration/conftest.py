"""Fixtures for namespace (integration) tests; the helpers behind them live in tests/helpers/.

* ``netns_set``: create namespaces with ``.add(prefix)``; all are deleted after the test.
* ``tun_pod`` (module scope): pod + target namespaces with the TUN engine running in the pod
  (see ``tun_netns.start_tun_pod``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tun_netns import NetnsSet, TunPod, start_tun_pod, stop_tun_pod


@pytest.fixture
def netns_set() -> Iterator[NetnsSet]:
    namespaces = NetnsSet()
    try:
        yield namespaces
    finally:
        namespaces.close()


@pytest.fixture(scope="module")
def tun_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunPod]:
    pod, namespaces = start_tun_pod(tmp_path_factory.mktemp("tun"))
    try:
        yield pod
    finally:
        stop_tun_pod(pod, namespaces)
