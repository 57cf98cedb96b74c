"""routing.apply pieces that need no namespace: relay address resolution (loopback names only).

The executor itself is tested against the real kernel in tests/integration/test_routing.py."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from tungo_sidecar.errors import TunError
from tungo_sidecar.proto.address import Address
from tungo_sidecar.routing.apply import resolve_relay_addresses


async def test_literals_pass_through_and_duplicates_collapse() -> None:
    hosts = [Address("203.0.113.7", 443), Address("2001:db8::7", 443), Address("203.0.113.7", 8443)]
    assert await resolve_relay_addresses(hosts) == (IPv4Address("203.0.113.7"), IPv6Address("2001:db8::7"))


async def test_names_resolve() -> None:
    # "localhost" resolves from /etc/hosts: no network involved.
    found = await resolve_relay_addresses([Address("localhost", 443)])
    assert IPv4Address("127.0.0.1") in found


async def test_unresolvable_name_is_a_tun_error() -> None:
    # An empty label fails inside the resolver's encoder: no DNS query leaves this machine.
    with pytest.raises(TunError, match=r"cannot resolve relay node relay\.\.example:443"):
        await resolve_relay_addresses([Address("relay..example", 443)])
