"""The TUN device and the packet NAT that lands TUN flows on local listeners (kernel TCP stack)."""
