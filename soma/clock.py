"""The server's clock. Every time the app acts on is read here, never from the browser."""

from datetime import datetime

from flask import current_app

from soma.models import utcnow


def now() -> datetime:
    """The current aware UTC time, or the app's `SOMA_CLOCK` (tests move it)."""
    clock = current_app.config.get("SOMA_CLOCK")
    return clock() if clock is not None else utcnow()
