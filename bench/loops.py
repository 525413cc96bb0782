"""Event loops for the benchmark's own processes (the relay's choice, reused)."""

from relay.ops.eventloop import new_event_loop

__all__ = ["new_event_loop"]
