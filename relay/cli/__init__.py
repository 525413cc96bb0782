"""The ``ahasend-relay`` command line."""

from relay.cli.main import main

__all__ = ["main"]
