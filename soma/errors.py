"""Domain errors, and one place that renders every error for the user."""

import math
import time

from flask import Flask, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError

from soma.extensions import db, limiter


class SomaError(Exception):
    """A domain error whose message the user can read; `status` is its HTTP code."""

    status = 409
    title = "That can't be done"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class FieldRefusal(SomaError):
    """A form's request refused for a reason the user can fix; `field` names the field at fault."""

    status = 400

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class KeyReused(SomaError):
    """A form's one-time key sent again with other content: refused, never taken as the first."""

    status = 409
    title = "This form was already used"


TITLES = {
    400: "Bad request",
    403: "Not allowed",
    404: "Page not found",
    405: "Method not allowed",
    409: "That can't be done",
    429: "Too many attempts",
    500: "Something went wrong",
}

MESSAGES = {
    400: "The request could not be understood. Please go back and try again.",
    403: "Your account does not have access to this page.",
    404: "There is nothing here. The page may have moved, or it was never yours to see.",
    405: "That page does not accept this kind of request.",
    409: "The request conflicts with the current state of things.",
    429: "You have tried too often.",
    500: "We are sorry: an error on our side stopped this request. Nothing was changed.",
}


def render_error(status: int, message: str | None = None, title: str | None = None, **extra):
    """Render the error page, or its fragment for htmx, with `status`."""
    template = "errors/_error.html" if request.headers.get("HX-Request") else "errors/error.html"
    body = render_template(
        template,
        status=status,
        title=title or TITLES.get(status, "Error"),
        message=message or MESSAGES.get(status, ""),
        **extra,
    )
    return body, status


def retry_after_seconds() -> int | None:
    """Return how many seconds until the breached rate limit resets, if known."""
    current = limiter.current_limit
    if current is None:
        return None
    return max(1, current.reset_at - int(time.time()))


def wait_text(seconds: int) -> str:
    """A wait in words a user reads at a glance: "45 seconds", "15 minutes", "3 hours"."""
    if seconds < 120:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    if minutes < 120:
        return f"{minutes} minutes"
    return f"{math.ceil(minutes / 60)} hours"


def register(app: Flask) -> None:
    """Install the error handlers on `app`."""

    @app.errorhandler(SomaError)
    def domain_error(error: SomaError):
        db.session.rollback()
        return render_error(error.status, error.message, error.title)

    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError):
        return render_error(
            400,
            "This form has expired or did not come from Soma. "
            "Reload the page and try again; nothing was changed.",
            "Form expired",
        )

    @app.errorhandler(429)
    def too_many(error):
        seconds = retry_after_seconds()
        wait = f"Please try again in {wait_text(seconds)}." if seconds else ""
        body, status = render_error(429, f"You have tried too often. {wait}".strip())
        headers = {"Retry-After": str(seconds)} if seconds else {}
        return body, status, headers

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if error.code and error.code < 400:
            return error
        return render_error(error.code or 500)

    @app.errorhandler(InternalServerError)
    def server_error(error):
        db.session.rollback()
        return render_error(500)
