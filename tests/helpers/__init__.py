"""Reusable test helpers (real processes on loopback, no mocks)."""
