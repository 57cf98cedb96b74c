"""Operator data model: names shared by the controller and the injector, and typed resource views.

Owns plain data only (constants, frozen dataclasses, TypedDicts). Imported by the controller's handlers
and by the pure injection core; it must never import kopf, aiohttp or anything that does I/O.
"""
