"""The test suite: real processes, real Redis; shared fixtures in conftest.py."""
