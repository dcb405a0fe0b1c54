"""Helpers the tests and the benchmarks share: real Redis and service processes on free loopback
ports, waits on conditions, and a small real bundle (servers.py)."""
