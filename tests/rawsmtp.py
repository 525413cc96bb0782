"""A byte-exact SMTP client for tests: send exactly these octets, read exactly that reply.

smtplib normalises line endings and dot-stuffs; protocol-quirk tests need to send bare LF,
NUL, lone dots and pipelined batches as written, so they use ``RawSMTP`` instead.
"""

from __future__ import annotations

import socket
from types import TracebackType


class RawSMTP:
    """One connection to 127.0.0.1:``port``; ``greeting`` holds the 220 line."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""
        self.greeting = self.reply()

    def __enter__(self) -> RawSMTP:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.sock.close()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def reply(self) -> str:
        """The next complete reply, its lines joined with ``\\n`` (CRLFs stripped)."""
        lines = []
        while True:
            line = self._line()
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    def cmd(self, line: str | bytes) -> str:
        """Send one command line (CRLF appended) and return its reply."""
        data = line.encode() if isinstance(line, str) else line
        self.send(data + b"\r\n")
        return self.reply()

    def envelope(self, sender: str = "app@example.com", *rcpts: str) -> None:
        """MAIL FROM + RCPT TO, each asserted to get 250, then DATA asserted to get 354."""
        assert self.cmd(f"MAIL FROM:<{sender}>").startswith("250"), "MAIL refused"
        for rcpt in rcpts or ("alice@example.net",):
            assert self.cmd(f"RCPT TO:<{rcpt}>").startswith("250"), f"RCPT {rcpt} refused"
        assert self.cmd("DATA").startswith("354")

    def closed(self) -> bool:
        """True when the server has closed the connection (no further reply arrives)."""
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def _line(self) -> str:
        while b"\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; unread: {self._buffer!r}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line.decode("utf-8", errors="replace")
