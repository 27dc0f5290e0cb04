"""What every package's ``commands`` module shares: the usage error and on/off switches.

Each package that has a subcommand owns it in its ``commands`` module
(``add_<name>_parser(commands)`` adds the subparser and sets ``handler``); ``natgrad.cli``
only composes them, applies ``--threads`` and maps errors to exit statuses. This module
sits below every package, so any of them can raise :class:`UsageError`.
"""

from __future__ import annotations

import argparse


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit status 2."""


def add_switch(parser: argparse.ArgumentParser, flag: str, help: str, default: str = "off") -> None:
    """An option that is off unless given; its help ends in ``(default: <default>)``, the
    words for what happens without it."""
    parser.add_argument(flag, action="store_true", help=f"{help} (default: {default})")


__all__ = ["UsageError", "add_switch"]
