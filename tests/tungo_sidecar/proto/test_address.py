from __future__ import annotations

import pytest

from tungo_sidecar.proto.address import Address, encode_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com:443", Address("example.com", 443)),
        ("10.0.0.1:80", Address("10.0.0.1", 80)),
        ("[2001:db8::1]:53", Address("2001:db8::1", 53)),
        (":8443", Address("", 8443)),
    ],
)
def test_parse_round_trip(text: str, expected: Address) -> None:
    assert Address.parse(text) == expected
    assert Address.parse(str(expected)) == expected


def test_default_port_applies_to_bare_hosts() -> None:
    assert Address.parse("example.com", default_port=443) == Address("example.com", 443)
    assert Address.parse("2001:db8::1", default_port=53) == Address("2001:db8::1", 53)
    assert Address.parse("[2001:db8::1]", default_port=53) == Address("2001:db8::1", 53)


@pytest.mark.parametrize("text", ["example.com", "host:http", "host:99999", "[::1]x"])
def test_bad_addresses_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        Address.parse(text)


# Bytes as go-gost/relay writes them (checked against its Go codec in a one-off run): Go's
# net.IP.To4() turns an IPv4-mapped IPv6 address into IPv4, and a zoned address is no IP to Go.
@pytest.mark.parametrize(
    ("address", "wire"),
    [
        (Address("::ffff:1.2.3.4", 80), "01010203040050"),
        (Address("fe80::1%eth0", 80), "030c666538303a3a312565746830" + "0050"),
        (Address("2001:db8::1", 53), "0420010db8000000000000000000000001" + "0035"),
    ],
)
def test_encode_address_matches_gost(address: Address, wire: str) -> None:
    assert encode_address(address).hex() == wire
