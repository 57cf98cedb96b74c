"""Bypass matcher benchmark: compile time of a large mixed rule set and the cost of one ``match``.

Builds ``--rules`` patterns deterministically (``random.Random(--seed)``) in GOST's syntax, in the mix a
real block list has: exact names, ``.suffix`` names, wildcards (most with a literal dotted suffix,
which the index files them under, a few without, tried on every flow), ``host:port`` and
``host:min-max``, IPv4 and IPv6 CIDRs, IP ranges of both families and exact IPs. Then ``--targets``
flows, about half of them built to match (a subdomain of a suffix rule, an address in a CIDR, an
instance of a wildcard...) and half random, as names, as IPs, and as both (a sniffed name and its
address).

Per run: one ``MatcherSet.compile`` of all the rules, timed; then every target is matched ``REPEAT``
times in a row and the mean is its cost (this hides the timer's own cost, ~50 ns, which would
otherwise dominate a single call). A target's figure is its median over the runs; the report gives the
median and p90 over the targets, the fraction that matched, and whether the median meets the
issue's target (``TARGET_MATCH_NS``).

The report is one JSON object on stdout. Not a test: numbers depend on the machine. Usage:
``.venv/bin/python benchmarks/rules.py [--rules 10000] [--targets 20000] [--runs 5] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import platform
import random
import statistics
import string
import time
from ipaddress import IPv4Address, IPv6Address

from tungo_sidecar.rules.matchers import MatcherSet, Pattern, Target

REPEAT = 20  # calls per target per timing: long enough to hide the timer, short enough to vary
TARGET_MATCH_NS = 5_000  # the goal: median match under 5 µs with 10,000 rules
TLDS = ("com", "net", "org", "io", "dev", "cloud", "example", "internal")


def _label(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(3, 10)))


def _domain(rng: random.Random) -> str:
    return ".".join([_label(rng) for _ in range(rng.randint(1, 2))] + [rng.choice(TLDS)])


def _v4(rng: random.Random) -> IPv4Address:
    return IPv4Address(rng.getrandbits(32))


def _v6(rng: random.Random) -> IPv6Address:
    return IPv6Address((0x2001 << 112) | rng.getrandbits(112))  # global unicast, never IPv4-mapped


class _Rules:
    """The generated patterns, and for each kind what a matching target looks like."""

    def __init__(self, rng: random.Random, count: int) -> None:
        self.patterns: list[str] = []
        self.names: list[str] = []  # names some rule matches
        self.ips: list[IPv4Address | IPv6Address] = []  # addresses some rule matches
        kinds = (
            (0.28, self._exact),
            (0.25, self._suffix),
            (0.06, self._wildcard_suffix),
            (0.05, self._wildcard_labels),
            (0.002, self._wildcard_bare),
            (0.05, self._host_port),
            (0.10, self._cidr4),
            (0.05, self._cidr6),
            (0.04, self._range),
            (0.10, self._ip),
        )
        weights = [weight for weight, _ in kinds]
        for make in rng.choices([make for _, make in kinds], weights=weights, k=count):
            make(rng)

    def _exact(self, rng: random.Random) -> None:
        name = _domain(rng)
        self.patterns.append(name)
        self.names.append(name)

    def _suffix(self, rng: random.Random) -> None:
        name = _domain(rng)
        self.patterns.append("." + name)
        self.names.append(f"{_label(rng)}.{_label(rng)}.{name}")

    def _wildcard_suffix(self, rng: random.Random) -> None:
        name = _domain(rng)
        self.patterns.append("*." + name)
        self.names.append(f"{_label(rng)}.{name}")

    def _wildcard_labels(self, rng: random.Random) -> None:
        stem, name = _label(rng), _domain(rng)
        self.patterns.append(f"{stem}-??.cdn.{name}")
        self.names.append(f"{stem}-{rng.randint(10, 99)}.cdn.{name}")

    def _wildcard_bare(self, rng: random.Random) -> None:
        stem = _label(rng)
        self.patterns.append(rng.choice((f"*{stem}*", f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.*")))
        self.names.append(f"a{stem}b.{rng.choice(TLDS)}")

    def _host_port(self, rng: random.Random) -> None:
        name = _domain(rng)
        low = rng.randint(1, 60000)
        self.patterns.append(rng.choice((f"{name}:{low}", f"{name}:{low}-{low + 100}")))
        self.names.append(name)  # matched only on the right port: targets use any port

    def _cidr4(self, rng: random.Random) -> None:
        network = ipaddress.ip_network(f"{_v4(rng)}/{rng.randint(8, 30)}", strict=False)
        self.patterns.append(str(network))
        self.ips.append(network[rng.randrange(network.num_addresses)])

    def _cidr6(self, rng: random.Random) -> None:
        network = ipaddress.ip_network(f"{_v6(rng)}/{rng.randint(32, 120)}", strict=False)
        self.patterns.append(str(network))
        self.ips.append(network[rng.randrange(min(network.num_addresses, 1 << 32))])

    def _range(self, rng: random.Random) -> None:
        first = _v4(rng) if rng.random() < 0.5 else _v6(rng)
        last = first + rng.randint(1, 10_000)
        self.patterns.append(f"{first}-{last}")
        self.ips.append(first + rng.randint(0, int(last) - int(first)))

    def _ip(self, rng: random.Random) -> None:
        address = _v4(rng) if rng.random() < 0.7 else _v6(rng)
        self.patterns.append(str(address) if address.version == 4 else f"[{address}]:443")
        self.ips.append(address)


def _targets(rng: random.Random, rules: _Rules, count: int) -> list[Target]:
    targets = []
    for _ in range(count):
        hit = rng.random() < 0.5
        name = rng.choice(rules.names) if hit else f"{_label(rng)}.{_domain(rng)}"
        address = rng.choice(rules.ips) if hit else (_v4(rng) if rng.random() < 0.7 else _v6(rng))
        port = rng.choice((80, 443, 443, 8080, 53))
        shape = rng.random()
        if shape < 0.4:
            targets.append(Target(name.upper() if rng.random() < 0.1 else name, None, port))
        elif shape < 0.7:
            targets.append(Target(None, address, port))
        else:
            targets.append(Target(name, address, port))
    return targets


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", type=int, default=10_000)
    parser.add_argument("--targets", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    rules = _Rules(rng, args.rules)
    patterns = [Pattern(text, f"bench[{i}]") for i, text in enumerate(rules.patterns)]
    targets = _targets(rng, rules, args.targets)

    compile_seconds: list[float] = []
    per_target: list[list[float]] = [[] for _ in targets]
    matched = 0
    for _ in range(args.runs):
        started = time.perf_counter()
        matchers, problems = MatcherSet.compile(patterns)
        compile_seconds.append(time.perf_counter() - started)
        if problems:
            raise SystemExit(f"generated patterns must all be valid: {problems[0]}")
        match = matchers.match
        repeat = range(REPEAT)
        matched = 0
        for index, target in enumerate(targets):
            started_ns = time.perf_counter_ns()
            for _ in repeat:
                found = match(target)
            per_target[index].append((time.perf_counter_ns() - started_ns) / REPEAT)
            matched += found is not None

    costs = [statistics.median(samples) for samples in per_target]
    median_ns = statistics.median(costs)
    report = {
        "rules": len(patterns),
        "targets": len(targets),
        "runs": args.runs,
        "compile_seconds": round(statistics.median(compile_seconds), 4),
        "match_ns": {"median": round(median_ns), "p90": round(_percentile(costs, 0.9))},
        "matched_fraction": round(matched / len(targets), 3),
        "python": platform.python_version(),
        "target_met": median_ns < TARGET_MATCH_NS,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
