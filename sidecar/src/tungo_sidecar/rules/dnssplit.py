"""Split DNS: which query names the DNS service sends to its local servers instead of through the chain.

tungo's own extension of GOST's ``dns`` handler (``config.dns``: ``dns.localDomains``,
``dns.localNets``): a name equal to or under one of the local domains (label by label, any letter
case: ``cluster.local`` takes ``x.svc.cluster.local`` but not ``evilcluster.local``), or a reverse
lookup name (``*.in-addr.arpa``, ``*.ip6.arpa``) whose network lies inside one of the local
networks, is local; every other name is not, so it leaves through the chain (fail closed: a name
nobody listed never reaches the local servers).

Pure: built once per DNS service by ``app``, asked once per query by ``net.dnsserver``.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network

from tungo_sidecar.proto.dnsmsg import Labels, reverse_network

IPNetwork = IPv4Network | IPv6Network


class DnsSplit:
    """``local(name)`` says why a name goes to the local servers, or None when it does not."""

    __slots__ = ("_domains", "_nets")

    def __init__(self, domains: Iterable[str] = (), nets: Iterable[IPNetwork] = ()) -> None:
        """``domains`` lower-case, without dots at either end (as ``config.dns`` gives them)."""
        self._domains = frozenset(tuple(domain.encode("ascii").split(b".")) for domain in domains)
        self._nets = tuple(nets)

    def __bool__(self) -> bool:
        return bool(self._domains or self._nets)

    def local(self, name: Labels) -> str | None:
        for start in range(len(name)):
            if name[start:] in self._domains:
                return "under " + b".".join(name[start:]).decode("ascii")
        if self._nets and (network := reverse_network(name)) is not None:
            for net in self._nets:
                if net.version == network.version and network.subnet_of(net):  # type: ignore[arg-type]
                    return f"reverse lookup in {net}"
        return None
