"""The relay-wide budget of in-flight message bytes (``RELAY_MAX_INFLIGHT_BYTES``).

Every message the relay holds costs memory from its first DATA byte until its delivery
ends (the reply is sent): the bytes read, the parsed tree, the request body. Without a
bound, many large messages at once grow the process until the kernel kills it. The
session takes each DATA chunk from ``InflightBudget`` as it reads it and gives everything
back when the transaction ends; DATA that finds the budget spent, or would overrun it
while being read, is answered ``452 4.3.1`` (``replies.INFLIGHT_BUDGET_FULL``) so the
client retries later, as with a full queue in Postfix. The budget counts bytes on the
wire; the process needs a small multiple of that (README, "Memory").

One event loop uses it: no lock.
"""

from __future__ import annotations

__all__ = ["Hold", "InflightBudget"]


class InflightBudget:
    """``limit`` bytes (0: no limit) shared by every transaction of the process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @property
    def full(self) -> bool:
        """True when nothing more may be taken."""
        return bool(self.limit) and self.used >= self.limit

    def hold(self) -> Hold:
        """A new, empty hold for one transaction's bytes."""
        return Hold(self)


class Hold:
    """The bytes one transaction has taken from its budget; ``release`` gives them back."""

    def __init__(self, budget: InflightBudget) -> None:
        self._budget = budget
        self.taken = 0

    def take(self, size: int) -> bool:
        """Take ``size`` more bytes; False (nothing taken) when they would pass the limit."""
        budget = self._budget
        if budget.limit and budget.used + size > budget.limit:
            return False
        budget.used += size
        self.taken += size
        return True

    def take_or_drop(self, size: int) -> bool:
        """``take``; when the budget refuses, also give back what this hold took, at once:
        the message's bytes are dropped (the rest of its DATA is read and discarded), so
        the room goes to the messages still being read instead of waiting for this upload
        to end (otherwise several large uploads at once could all be refused)."""
        if self.take(size):
            return True
        self.release()
        return False

    def release(self) -> None:
        """Give back everything taken (idempotent)."""
        self._budget.used -= self.taken
        self.taken = 0
