"""Admission before work: how many requests are inside, and how many body bytes are
being read, parsed and tokenized at once.

Why before the body is read: a flood of maximum-size bodies costs memory and CPU to read,
parse and tokenize, before the batcher's queue bound could refuse any of it. Counting
them at the door (from ``Content-Length``) lets the worker refuse with 429 at once and
keep its memory bounded, while short requests, always let through the byte bound, still
get in.
"""

from __future__ import annotations

import attrs


class Refused(Exception):
    """Admission said no; ``reason`` is for the error message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.define(eq=False)
class Ticket:
    """One admitted request: holds a request slot until closed, and intake bytes until
    :meth:`end_intake` (its body has become token ids) or close."""

    _gate: Admission
    intake: int
    closed: bool = False

    def end_intake(self) -> None:
        """The body is read, parsed and tokenized: its bytes no longer count."""
        self._gate.intake_bytes -= self.intake
        self.intake = 0

    def close(self) -> None:
        """The request is answered (or failed): free its slot."""
        if self.closed:
            return
        self.closed = True
        self.end_intake()
        self._gate.requests -= 1


@attrs.define
class Admission:
    """Bounds requests inside (``max_requests``) and intake bytes (``max_intake_bytes``).

    A body of unknown length counts as ``max_body_bytes``. Bodies up to
    ``small_body_bytes`` pass the byte bound regardless, so memory stays below
    ``max_intake_bytes + max_requests * small_body_bytes``; the first large body is
    always let in, so a request as large as the limit is possible on an idle worker.
    Bulk requests (``bulk=True``) are refused once ``max_bulk_requests`` requests of
    any kind are inside (``None``: ``max_requests``), which keeps the remaining slots
    for interactive work. Single-threaded: used from the event loop only.
    """

    max_requests: int
    max_intake_bytes: int
    small_body_bytes: int
    max_body_bytes: int
    max_bulk_requests: int | None = None
    requests: int = 0
    intake_bytes: int = 0

    def enter(self, declared_length: int | None, *, bulk: bool = False) -> Ticket:
        """A ticket, or :class:`Refused` when either bound would be passed."""
        if self.requests >= self.max_requests:
            raise Refused(
                f"{self.requests} requests are already inside (limit {self.max_requests})"
            )
        if bulk and self.max_bulk_requests is not None and self.requests >= self.max_bulk_requests:
            raise Refused(
                f"{self.requests} requests are already inside "
                f"(limit {self.max_bulk_requests} for bulk work)"
            )
        size = self.max_body_bytes if declared_length is None else declared_length
        small = size <= self.small_body_bytes
        if not small and self.intake_bytes > 0 and self.intake_bytes + size > self.max_intake_bytes:
            raise Refused(
                f"{self.intake_bytes} body bytes are being read and tokenized "
                f"(limit {self.max_intake_bytes})"
            )
        self.requests += 1
        self.intake_bytes += size
        return Ticket(self, size)
