"""A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps what it receives, for the mail tests.

`refuse` makes it answer every message with that reply ("451 ..." or "550 ..."), as a
server that is busy or rejects the mail would; `stop` and `start` take it down and up
again on the same port.
"""

import email
import email.policy
import socket
import threading

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Handler:
    def __init__(self, server: "FakeSMTP"):
        self.server = server

    async def handle_DATA(self, _server, _session, envelope):
        if self.server.refuse:
            self.server.refused += 1
            return self.server.refuse
        # Lines travel with CRLF; kept with the newlines they were written with.
        content = envelope.original_content.replace(b"\r\n", b"\n")
        message = email.message_from_bytes(content, policy=email.policy.default)
        with self.server.lock:
            self.server.received.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


class FakeSMTP:
    def __init__(self):
        self.port = free_port()
        self.received: list[tuple[list[str], email.message.EmailMessage]] = []
        self.lock = threading.Lock()
        self.refuse: str | None = None
        self.refused = 0
        self._controller: Controller | None = None

    def start(self) -> "FakeSMTP":
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def messages(self) -> list[email.message.EmailMessage]:
        with self.lock:
            return [message for _, message in self.received]
