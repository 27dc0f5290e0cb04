"""The benchmarks users run with ``natgrad bench NAME``: one registry.

A benchmark adds its options to an argparse parser and runs from the parsed
arguments, returning a JSON-ready dict of its figures (``--json`` prints it as one
line; otherwise the benchmark prints its own table).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from natgrad.registry import Registry


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict]
    report: Callable[[dict], str] | None = None  # a table; None: run prints its own


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Add ``benchmark`` under its name; a name can be registered once."""
    return BENCHMARKS.add(benchmark.name, benchmark)


def load_benchmarks() -> Registry[Benchmark]:
    """Every registered benchmark (importing their modules registers them)."""
    from natgrad.bench import inversion, step, time_to_target  # noqa: F401

    return BENCHMARKS


__all__ = ["Benchmark", "BENCHMARKS", "register_benchmark", "load_benchmarks"]
