"""Helpers for traffic tests: namespaces, per-namespace frame agents, frame builders, waits."""
