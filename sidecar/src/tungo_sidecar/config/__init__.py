"""Typed, frozen configuration: GOST -L/-F URLs and GOST v3 YAML parse into the same model."""
