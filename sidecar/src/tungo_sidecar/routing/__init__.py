"""Kernel routing changes as data: a plan of routes/rules, an executor that applies it, and its teardown."""
