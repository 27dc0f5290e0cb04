"""Benchmarks users run on their own hardware: ``natgrad bench NAME [options] [--json]``."""
