"""Pure rendering: TunGateway + Chain + Secret contents → the sidecar's GOST v3 YAML and its Secret.

Called by the handlers; never does I/O and never imports kopf.
"""
