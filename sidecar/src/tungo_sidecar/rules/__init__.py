"""Bypass matchers (GOST syntax) deciding chain vs direct per flow; pure functions."""
