"""Role checks, safe redirects and the security headers on every response."""

from functools import wraps
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from flask import Flask, abort, current_app, g, request, session
from flask_login import UserMixin, current_user, login_required
from flask_login.signals import user_unauthorized
from sqlalchemy import select

from soma.extensions import db, login_manager
from soma.models import Role, User

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "frame-ancestors 'none'",
    ]
)


# Endpoints on the hot path that read the user's row themselves, in the same
# query as what they show (see SessionUser). Every other endpoint loads the User.
SESSION_USER_ENDPOINTS: set[str] = set()

# The user's session version when the session was made (User.session_version).
# A session whose version is not the user's current one has been ended.
SESSION_VERSION_KEY = "_session_version"


class SessionUser(UserMixin):
    """The user a valid session names, before their row is read.

    Flask-Login has checked the session (its signature and, with strong session
    protection, the client it was made for). The endpoint that gets this in
    place of a User reads the user's row in its own query and answers 404 when
    there is none; it reads the row's session version in that query too, and
    answers `refuse_ended_session()` when it is not `session_version`. It must
    not use anything but `id` and `session_version`.
    """

    def __init__(self, user_id: int, session_version: int | None):
        self.id = user_id
        self.session_version = session_version


@login_manager.user_loader
def load_user(user_id: str) -> User | SessionUser | None:
    """Return the logged-in user for the session, or None when there is none or it was ended."""
    try:
        user_id = int(user_id)
    except ValueError:
        return None
    version = session.get(SESSION_VERSION_KEY)
    if request.endpoint in SESSION_USER_ENDPOINTS:
        return SessionUser(user_id, version)
    user = db.session.get(User, user_id)
    if user is None or user.session_version != version:
        forget_session()
        return None
    return user


def _asked_to_log_in(_app, **_extra) -> None:
    """Flask-Login is about to answer this request with its log-in redirect (its
    `user_unauthorized` signal): noted for `answer_htmx_with_a_page_redirect`."""
    g.soma_asked_to_log_in = True


user_unauthorized.connect(_asked_to_log_in)

REDIRECTS = (301, 302, 303, 307, 308)


def answer_htmx_with_a_page_redirect(response):
    """Flask-Login's log-in redirect, made fit for htmx (an after-request hook).

    htmx follows a redirect itself and swaps what it finds into the fragment: a class
    page whose session ended would show the log-in page inside its timer. So an htmx
    request (`HX-Request`, not a history restore, which reads no `HX-Redirect`) that
    Flask-Login sent to log in gets 401 with `HX-Redirect` instead, which htmx follows
    with the whole page, and `next` is the page the fragment is on (the path of
    `HX-Current-URL`), not the fragment. Everything else (the message, the signal, the
    log-in view) is Flask-Login's own; a message flashed by several such requests before
    the page leaves is kept once."""
    if not g.get("soma_asked_to_log_in") or response.status_code not in REDIRECTS:
        return response
    headers = request.headers
    if headers.get("HX-Request") != "true" or headers.get("HX-History-Restore-Request"):
        return response
    target = urlsplit(response.location)
    query = [(k, v) for k, v in parse_qsl(target.query, keep_blank_values=True) if k != "next"]
    page = _page_of(headers.get("HX-Current-URL"))
    if page is not None:
        query.append(("next", page))
    response.status_code = 401
    del response.headers["Location"]
    response.headers["HX-Redirect"] = urlunsplit(target._replace(query=urlencode(query)))
    response.set_data(b"")
    flashes = session.get("_flashes")
    if flashes:
        kept = [flash for n, flash in enumerate(flashes) if flash not in flashes[:n]]
        if len(kept) != len(flashes):
            session["_flashes"] = kept
    return response


def _page_of(url: str | None) -> str | None:
    """The path (and query) of `url`, the page an htmx request came from, if it is safe
    to send the browser back to; else None. (Only the path is kept: another host in it,
    a proxy's, say, changes nothing.)"""
    if not url or len(url) > 2048:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:  # (a malformed address: "http://[x", say)
        return None
    page = parts.path + (f"?{parts.query}" if parts.query else "")
    return page if is_safe_next(page) else None


def forget_session() -> None:
    """Empty this session of the log-in and all it held (its messages, say): the cookie
    the browser gets back has none of it.

    The CSRF token stays: a form this request may already have rendered (the user
    is loaded when something first asks for them) must still be accepted.
    """
    csrf_token = session.get("csrf_token")
    session.clear()
    if csrf_token is not None:
        session["csrf_token"] = csrf_token


def refuse_ended_session():
    """The answer to a SessionUser whose session has been ended: logged out, as if never in."""
    forget_session()
    return current_app.login_manager.unauthorized()


def owned(model, user, row_id: int):
    """The `model` row `row_id` if it is `user`'s (its `user_id`), or any row for an admin;
    None otherwise, which the page answers with 404. Read fresh from the database."""
    query = select(model).where(model.id == row_id)
    if user.role != Role.ADMIN:
        query = query.where(model.user_id == user.id)
    return db.session.scalars(query.execution_options(populate_existing=True)).first()


def role_required(*roles: str):
    """Let only logged-in users with one of `roles` in; others get 403."""

    def decorator(view):
        @wraps(view)
        @login_required
        def wrapped(*args, **kwargs):
            if current_user.role not in roles:
                abort(403)
            return view(*args, **kwargs)

        return wrapped

    return decorator


def is_safe_next(target: str | None) -> bool:
    """Return whether `target` is a path on this site, safe to redirect to."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return False
    if "\\" in target or any(ord(c) < 32 for c in target):
        return False
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc


def security_header_items(app: Flask) -> tuple[tuple[str, str], ...]:
    """The security headers every response carries (unless the view set its own), in order."""
    items = (
        ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "strict-origin-when-cross-origin"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
    )
    if app.config["SOMA_ENV"] == "production":
        items += (("Strict-Transport-Security", "max-age=63072000; includeSubDomains"),)
    return items


def register(app: Flask) -> None:
    """Add the security headers to every response.

    The class timer's common poll is answered beneath Flask (soma.classes.fast_poll),
    with these same headers from `security_header_items`.
    """
    items = security_header_items(app)

    app.after_request(answer_htmx_with_a_page_redirect)

    @app.after_request
    def security_headers(response):
        headers = response.headers
        if request.endpoint != "static" and "_user_id" in session:
            # A logged-in page (balances, history, classes) is this user's alone:
            # never stored by the browser or a proxy, so Back after log-out or
            # the next user of a shared computer cannot bring it up again.
            headers["Cache-Control"] = "no-store"
        for name, value in items:
            headers.setdefault(name, value)
        return response
