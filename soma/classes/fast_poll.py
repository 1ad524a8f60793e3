"""The timer poll's own path: the common poll answered beneath Flask's request machinery.

Every open class page polls GET /classes/<id>/timer every second. Through Flask a
poll pays for what a fragment of a logged-in page does not use: the request and
its context objects, URL routing, Flask-Limiter's before- and after-request
hooks (the route is exempt: it has its own limit), Flask-Login's proxies, the
response object and its header bookkeeping. `TimerPoll` is a WSGI layer around
the Flask app (inside ProxyFix, so it sees the client's address as Flask does)
that answers the ordinary poll itself, with the same checks in the same order:

1. the session cookie, checked as Flask checks it (the app's own signing
   serializer: signature, secret key fallbacks, PERMANENT_SESSION_LIFETIME);
2. Flask-Login's strong session protection (the session's `_id` is the hash of
   this client's address and user agent);
3. the poll's own rate limit (soma.classes.poll_limit), counted once;
4. the class and the viewer's row in one query (soma.classes.service.view_for),
   or that read kept by the worker until PostgreSQL notifies a change
   (soma.classes.poll_cache): the viewer must be its student, its teacher or an
   admin, and the session's version must be the user's current one;
5. the fragment, from the same template, and the same headers as the Flask path
   (the security headers of soma.security, Cache-Control: no-store, Vary: Cookie).

Anything else it hands to Flask untouched, which answers as it always has: no
session or a bad one (log in), another client's session (logged out), a class
that is not the viewer's (404), an ended session (logged out), a class that has
fallen due (the Flask view settles it), a refused poll (429, the site's error
page), a HEAD, a database error. The poll is counted once either way (the
verdict is left in the WSGI environ for the Flask view). So this path only ever
answers 200, and only when the Flask path would have answered 200 with the same
body and headers; tests/unit/test_timer_poll.py compares the two.
"""

import logging
import re
import time
from hashlib import sha512
from urllib.parse import parse_qsl

from flask import Flask
from itsdangerous import BadSignature
from werkzeug import urls  # noqa: F401 - registers the "werkzeug.url_quote" error handler
from werkzeug.http import parse_cookie

from soma import clock
from soma.classes import service, tracker
from soma.classes.poll_cache import PollCache
from soma.classes.poll_limit import VERDICT, poll_limit_of
from soma.classes.routes import changed_since
from soma.extensions import db
from soma.inputs import parse_id
from soma.models.classes import ClassSession
from soma.security import SESSION_VERSION_KEY, security_header_items

log = logging.getLogger(__name__)

# The route's path, as the `id(class_sessions)` converter reads it (the range is
# checked by parse_id, as the converter does).
PATH = re.compile(r"/classes/([1-9][0-9]{0,18})/timer")
# Set in the environ to send a poll through Flask (the tests compare both paths).
THROUGH_FLASK = "soma.timer_poll.through_flask"
TEMPLATE = "classes/_timer.html"
# Checked session cookies a worker remembers (emptied when full): one per open page.
KNOWN_COOKIES = 10_000


class TimerPoll:
    """A WSGI layer that answers the common timer poll (see the module)."""

    def __init__(self, app: Flask, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app
        self.column = ClassSession.__table__.c.id
        self._headers: list[tuple[str, str]] | None = None
        self._serializer = None
        # Made here, with the app (its commit hook registered before any request runs);
        # its listener starts with the first poll, in the worker process.
        self._cache: PollCache | None = None
        with app.app_context():
            engine = db.engine
            if app.config["TIMER_POLL_CACHE"] and engine.dialect.name == "postgresql":
                url = engine.url.set(drivername="postgresql")
                self._cache = PollCache(url.render_as_string(hide_password=False), engine)
        self.max_age = int(app.permanent_session_lifetime.total_seconds())
        # Checked session cookies, by their text: {cookie: (session data, signed at)}.
        self._cookies: dict[str, tuple[dict, int]] = {}

    def __call__(self, environ, start_response):
        if (
            environ.get("REQUEST_METHOD") == "GET"
            and PATH.fullmatch(environ.get("PATH_INFO", ""))
            and not environ.get(THROUGH_FLASK)
        ):
            try:
                answer = self.answer(environ)
            except Exception:  # Flask answers it, with its error handling and logging.
                log.warning("timer poll handed to Flask after an error", exc_info=True)
                answer = None
            if answer is not None:
                status, headers, body = answer
                start_response(status, headers)
                return [body]
        return self.wsgi_app(environ, start_response)

    def answer(self, environ) -> tuple[str, list[tuple[str, str]], bytes] | None:
        """The poll's answer, or None for Flask to answer it."""
        app = self.app
        config = app.config
        if config.get("LOGIN_DISABLED") or config.get("TRUSTED_HOSTS"):
            return None  # (Flask checks the host against TRUSTED_HOSTS: left to it)
        class_id = parse_id(PATH.fullmatch(environ["PATH_INFO"]).group(1), self.column)
        if class_id is None:
            return None
        data = self.session_of(environ)
        if data is None or "_remember" in data:
            return None
        raw_user_id = data.get("_user_id")
        if raw_user_id is None:
            return None
        protection = config.get("SESSION_PROTECTION", app.login_manager.session_protection)
        if protection in ("basic", "strong") and data.get("_id") != identifier(environ):
            return None
        user_id = int(raw_user_id)  # as soma.security.load_user; ValueError: to Flask
        # Counted once, here; the Flask view reads the verdict if it answers instead.
        allowed = poll_limit_of(app).allow(f"user:{raw_user_id}")
        environ[VERDICT] = allowed
        if not allowed:
            return None
        with app.app_context():
            cache = self.cache()
            found = cache.get(user_id, class_id) if cache is not None else None
            if found is None:
                mark = cache.mark() if cache is not None else 0
                found = service.view_for(user_id, class_id)
                if found is None:
                    return None
                if cache is not None:
                    cache.put(user_id, class_id, *found, mark)
            session, session_version = found
            if session_version != data.get(SESSION_VERSION_KEY):
                return None
            now = clock.now()
            limit = service.pause_limit()
            if service.due(service.clock_of(session), now, limit) is not None:
                return None
            viewer = tracker.viewer_of(session, user_id)
            shown = tracker.tracker_for(session, viewer, now, limit)
            # What url_for('classes.timer', class_id=..., seen=...) builds (a status is
            # a plain word: nothing in it to quote).
            # WSGI hands the prefix over as latin-1 text; Werkzeug decodes it as UTF-8.
            script = environ.get("SCRIPT_NAME", "")
            root = script.encode("latin-1").decode("utf-8", "replace").rstrip("/")
            poll_url = f"{root}/classes/{session.id}/timer?seen={session.status}"
            template = app.jinja_env.get_template(TEMPLATE)
            body = template.render(tracker=shown, poll_url=poll_url).encode()
        args = first_arguments(environ.get("QUERY_STRING", ""))
        changed = changed_since(session, args.get("seen"), args.get("panel"))
        # In the order Flask's response has them: the view's own header first.
        headers = [("HX-Trigger", "class-changed")] if changed else []
        headers.append(("Content-Type", "text/html; charset=utf-8"))
        headers.append(("Content-Length", str(len(body))))
        headers.extend(self.headers())
        return "200 OK", headers, body

    def session_of(self, environ) -> dict | None:
        """The session cookie's content, checked as Flask's session interface checks it;
        None when there is none or it does not check out.

        A cookie whose signature has been checked is remembered (the cookie's exact
        text, what it holds, when it was signed), so the next poll of the same page
        only checks its age again: the same text always checks out the same way with
        the same keys, and the age is checked on every poll as Flask checks it.
        """
        interface = self.app.session_interface
        value = parse_cookie(environ).get(interface.get_cookie_name(self.app))
        if not value:
            return None
        known = self._cookies.get(value)
        if known is not None:
            data, signed = known
            age = int(time.time()) - signed  # as itsdangerous.TimestampSigner.unsign
            if 0 <= age <= self.max_age:
                return data
        serializer = self.serializer()
        if serializer is None:
            return None
        try:
            data, signed_at = serializer.loads(value, max_age=self.max_age, return_timestamp=True)
        except BadSignature:
            return None
        if not isinstance(data, dict):
            return None
        if len(self._cookies) >= KNOWN_COOKIES:
            self._cookies.clear()
        self._cookies[value] = (data, int(signed_at.timestamp()))
        return data

    def cache(self) -> PollCache | None:
        """The worker's cache of timer reads: on PostgreSQL with TIMER_POLL_CACHE on."""
        return self._cache

    def serializer(self):
        """The app's session signing serializer (Flask makes one per request), made once."""
        if self._serializer is None:
            self._serializer = self.app.session_interface.get_signing_serializer(self.app)
        return self._serializer

    def headers(self) -> list[tuple[str, str]]:
        """What the after-request hooks add to a logged-in fragment, in their order."""
        if self._headers is None:
            self._headers = [
                ("Cache-Control", "no-store"),
                *security_header_items(self.app),
                ("Vary", "Cookie"),
            ]
        return self._headers


def first_arguments(query: str) -> dict[str, str]:
    """The query's arguments, each its first value, read as Werkzeug reads `request.args`."""
    found: dict[str, str] = {}
    for key, value in parse_qsl(
        query.encode("latin1").decode(), keep_blank_values=True, errors="werkzeug.url_quote"
    ):
        found.setdefault(key, value)
    return found


def identifier(environ) -> str:
    """Flask-Login's session identifier for this client (flask_login.utils._create_identifier)."""
    address = environ.get("HTTP_X_FORWARDED_FOR", environ.get("REMOTE_ADDR"))
    if address is not None:
        address = address.encode("utf-8").split(b",")[0].strip()
    user_agent = environ.get("HTTP_USER_AGENT")
    if user_agent is not None:
        user_agent = user_agent.encode("utf-8")
    return sha512(f"{address}|{user_agent}".encode()).hexdigest()
