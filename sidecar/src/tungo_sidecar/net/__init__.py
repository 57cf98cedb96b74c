"""The asyncio shell: streams, transports (tcp/tls/ws/wss), connectors, handlers, listeners, dialing."""
