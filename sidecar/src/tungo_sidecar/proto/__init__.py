"""Sans-I/O protocol codecs: relay, socks5, http CONNECT, addresses. Never import asyncio/socket/ssl."""
