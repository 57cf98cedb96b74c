"""tungo: a tun2socks engine that speaks GOST's wire protocols (relay, socks5, http over tcp/tls/ws/wss)."""

__version__ = "0.1.0"
