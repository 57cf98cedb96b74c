"""Address -> name, learnt from the DNS answers a pod received: the name a flow to an IP was meant for.

Owns the map behind ``sniffing.udp``: the TUN engine ``learn``s every ``proto.dns.DnsAnswer`` it sees on
port 53 and ``lookup``s a new flow's destination when sniffing gave no name (UDP, a server-speaks-first
protocol, encrypted SNI), so domain rules can still match. Pure: no clock of its own (the caller passes
``now``, e.g. ``time.monotonic()``), no I/O, no locks (one event loop owns it).

Choices, each a trade between a wrong name and no name:

* **TTL clamp** ``[min_ttl, max_ttl]``. Applications keep addresses longer than tiny TTLs (browsers
  and the JVM cache 30-60 s regardless, connection pools reconnect to what they resolved), and a TTL
  of 0 would make the entry useless before the flow it names starts; hence a 60 s floor. The ceiling
  is one day, Unbound's default ``cache-max-ttl``: a recursive resolver would not trust the TTL longer
  either, and an address reused for another name by then has usually been answered again.
* **Latest answer wins.** When one address is answered for several names (shared CDN edges, virtual
  hosting), the most recent answer is the best guess for the next flow to it, which normally follows
  the lookup that produced it.
* **LRU bound.** At most ``capacity`` entries (65536 by default: about 22 MB when every address has its
  own 30-character name, measured with tracemalloc; far more distinct addresses than a pod normally
  resolves in a day); beyond it the least recently learnt or looked-up entry goes.
  Expired entries are dropped when looked up, or pushed out by the LRU order.
* IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) are the IPv4 address, in both directions.
"""

from __future__ import annotations

from collections import OrderedDict
from ipaddress import IPv4Address, IPv6Address

from tungo_sidecar.proto.dns import DnsAnswer

DEFAULT_CAPACITY = 65536
DEFAULT_MIN_TTL = 60.0
DEFAULT_MAX_TTL = 86400.0

_Ip = IPv4Address | IPv6Address


def _key(ip: _Ip) -> _Ip:
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class DnsMap:
    """A bounded, TTL-aware, least-recently-used map from addresses to the name last answered for them."""

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        *,
        min_ttl: float = DEFAULT_MIN_TTL,
        max_ttl: float = DEFAULT_MAX_TTL,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"dnsmap: capacity must be positive, not {capacity}")
        if not 0 <= min_ttl <= max_ttl:
            raise ValueError(f"dnsmap: need 0 <= min_ttl <= max_ttl, got {min_ttl:g} and {max_ttl:g}")
        self._capacity = capacity
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        # address -> (name, expiry); order is least recently used first.
        self._entries: OrderedDict[_Ip, tuple[str, float]] = OrderedDict()

    @property
    def capacity(self) -> int:
        return self._capacity

    def learn(self, answer: DnsAnswer, now: float) -> int:
        """Map each address of ``answer`` to its name until ``now`` + its clamped TTL; returns how many
        entries were added or refreshed."""
        for ip, ttl in answer.addresses:
            key = _key(ip)
            expiry = now + min(max(float(ttl), self._min_ttl), self._max_ttl)
            self._entries[key] = (answer.name, expiry)
            self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
        return len(answer.addresses)

    def lookup(self, ip: _Ip, now: float) -> str | None:
        """The name ``ip`` was last answered for, unless that answer has expired. A hit counts as a use."""
        key = _key(ip)
        entry = self._entries.get(key)
        if entry is None:
            return None
        name, expiry = entry
        if now >= expiry:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return name

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["DEFAULT_CAPACITY", "DEFAULT_MAX_TTL", "DEFAULT_MIN_TTL", "DnsMap"]
