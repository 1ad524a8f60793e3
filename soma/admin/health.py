"""/admin/health, and the system alerts: the sweeper stalled, the database unreachable.

The sweeper records a heartbeat at the end of each pass that worked (`SweeperWatch`).
A stall is noticed twice over: by the sweeper's own next pass (its previous beat is
older than SWEEPER_STALE_SECONDS) and, while it is still down, by any admin page (one
primary-key read). Both raise the same cause, named by the last beat, so each stall
raises one alert. While the database is down nothing can be written, so the sweeper
remembers when its first failing pass began and raises the alert on the first pass
that works again, saying from when to when.
"""

import time
from datetime import datetime, timedelta
from functools import wraps
from urllib.parse import urlsplit

from flask import current_app, g, render_template
from flask_login import current_user
from sqlalchemy import select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from soma import clock
from soma.admin.blueprint import bp
from soma.alerts import raise_alert
from soma.extensions import db, limiter, login_manager
from soma.models import Alert, Heartbeat, Role
from soma.security import role_required

SWEEPER = "sweeper"


def stale_limit() -> timedelta:
    return timedelta(seconds=current_app.config["SWEEPER_STALE_SECONDS"])


def when(moment: datetime) -> str:
    """A time as the alerts and the page show it (UTC, to the second)."""
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def stale_cause(last_beat: datetime) -> str:
    """The cause of the stall that began after `last_beat`: one alert per stall."""
    return f"sweeper-stale:{last_beat.isoformat()}"


def first_line(error: BaseException) -> str:
    """An error as a page shows it: its kind and first line (no statement, no stack)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def is_connection_error(error: BaseException) -> bool:
    """Whether `error` says the database could not be reached (not a bug in a query)."""
    if isinstance(error, DBAPIError):
        return error.connection_invalidated or type(error).__name__ in {
            "OperationalError",
            "InterfaceError",
        }
    return False


# The sweeper's side ----------------------------------------------------------------------


class SweeperWatch:
    """What the sweep loop keeps between passes: when the database stopped answering."""

    def __init__(self):
        self.down_since: datetime | None = None

    def failed(self, started: datetime, error: BaseException) -> None:
        """A pass that began at `started` failed; a connection error starts an outage."""
        if self.down_since is None and is_connection_error(error):
            self.down_since = started

    def passed(self, started: datetime, detail: str) -> None:
        """A pass that began at `started` worked: raise what the gap since the last one
        says, then beat, in one committed transaction."""
        previous = db.session.get(Heartbeat, SWEEPER, populate_existing=True)
        if previous is not None and started - previous.at > stale_limit():
            raise_alert(
                "sweeper-stale",
                stale_cause(previous.at),
                f"The sweeper did not run from {when(previous.at)} to {when(started)}: "
                "classes were not settled and late payments not rechecked in between.",
            )
        if self.down_since is not None:
            raise_alert(
                "database-unreachable",
                f"database-unreachable:{self.down_since.isoformat()}",
                f"The database was unreachable from {when(self.down_since)} to "
                f"{when(started)}: every sweeper pass failed in between, and so did "
                "the pages and payments that needed it.",
            )
        beat(detail)
        db.session.commit()
        self.down_since = None


def beat(detail: str, name: str = SWEEPER) -> None:
    """Upsert the heartbeat `name` at the clock's now (joins the caller's transaction)."""
    dialect = postgresql if db.session.get_bind().dialect.name == "postgresql" else sqlite
    values = {"name": name, "at": clock.now(), "detail": detail[:500]}
    statement = dialect.insert(Heartbeat).values(**values)
    db.session.execute(
        statement.on_conflict_do_update(
            index_elements=[Heartbeat.name], set_={"at": values["at"], "detail": values["detail"]}
        )
    )


# The web's side --------------------------------------------------------------------------


def notice_stale_sweeper() -> Heartbeat | None:
    """Raise the stall alert if the sweeper's last beat is too old; return the beat.

    One primary-key read; while stale, one read of the alert and an insert the first time.
    """
    last = db.session.get(Heartbeat, SWEEPER)
    if last is None or clock.now() - last.at <= stale_limit() or g.get("stall_noticed"):
        return last
    g.stall_noticed = True
    cause = stale_cause(last.at)
    # Read before writing: while the stall lasts, every admin page comes here.
    if db.session.scalar(select(Alert.id).where(Alert.cause == cause)) is None:
        raise_alert(
            "sweeper-stale",
            cause,
            f"The sweeper has not finished a pass since {when(last.at)}: classes are not "
            "settled and late payments not rechecked until it runs again.",
        )
        db.session.commit()
    return last


def _quietly_rollback() -> None:
    try:
        db.session.rollback()
    except SQLAlchemyError:
        db.session.remove()


@bp.before_request
def _watch_the_sweeper():
    """Any admin page view notices a stalled sweeper; a database fault is left to the page."""
    try:
        if current_user.is_authenticated and current_user.role == Role.ADMIN:
            notice_stale_sweeper()
    except SQLAlchemyError:
        _quietly_rollback()


# The page --------------------------------------------------------------------------------


def database_state() -> dict:
    """`SELECT 1` and its latency; the server's version and the migration revision."""
    state = {"ok": False, "latency_ms": None, "error": None, "version": None, "revision": None}
    url = db.engine.url
    state["where"] = (
        f"{url.drivername.split('+')[0]}://{url.host or ''}"
        f"{':' + str(url.port) if url.port else ''}/{url.database or ''}"
    )
    started = time.perf_counter()
    try:
        db.session.execute(text("SELECT 1"))
        state["latency_ms"] = (time.perf_counter() - started) * 1000
        state["ok"] = True
        if db.session.get_bind().dialect.name == "postgresql":
            state["version"] = "PostgreSQL " + db.session.scalar(text("SHOW server_version"))
        else:
            state["version"] = "SQLite " + db.session.scalar(text("SELECT sqlite_version()"))
        state["revision"] = db.session.scalar(text("SELECT version_num FROM alembic_version"))
    except SQLAlchemyError as error:
        _quietly_rollback()
        state["error"] = first_line(getattr(error, "orig", None) or error)[:300]
    state["head"] = _migration_head()
    return state


def _migration_head() -> str | None:
    """The newest migration this code ships (to compare with the database's)."""
    try:
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", current_app.extensions["migrate"].directory)
        heads = ScriptDirectory.from_config(config).get_heads()
    except Exception:  # the page must show, whatever the migrations folder holds
        current_app.logger.exception("health: cannot read the migrations' head")
        return None
    return ", ".join(sorted(heads)) or None


def sweeper_state(database_ok: bool) -> dict:
    """The sweeper's last beat, its age, and whether that is a stall."""
    state = {"known": database_ok, "beat": None, "age": None, "stale": False}
    state["limit_seconds"] = current_app.config["SWEEPER_STALE_SECONDS"]
    if not database_ok:
        return state
    try:
        last = notice_stale_sweeper()
    except SQLAlchemyError:
        _quietly_rollback()
        state["known"] = False
        return state
    if last is not None:
        age = clock.now() - last.at
        state.update(beat=last, age=age, stale=age > stale_limit())
    return state


def ago(age: timedelta | None) -> str:
    """An age in words: "45 seconds", "3 minutes", "2 hours 5 minutes", "3 days"."""
    if age is None:
        return ""
    seconds = max(0, int(age.total_seconds()))
    if seconds < 120:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} minutes"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} hours {minutes} minutes"
    return f"{hours // 24} days"


def rate_limit_state() -> dict:
    """The rate-limit store's address without credentials, and whether it answers."""
    uri = current_app.config.get("RATELIMIT_STORAGE_URI") or "memory://"
    parts = urlsplit(uri)
    # The hosts without the credentials before "@" (several, comma-separated, for a
    # Sentinel or a cluster: urlsplit's hostname and port cannot read those).
    hosts = parts.netloc.rpartition("@")[2]
    address = f"{parts.scheme}://{hosts}{parts.path if hosts else ''}"
    state = {"scheme": parts.scheme, "address": address, "ok": False, "error": None}
    state["shared"] = parts.scheme != "memory"
    try:
        state["ok"] = bool(limiter.storage.check())
    except Exception as error:  # the store is down or misnamed: say so, never fail the page
        state["error"] = type(error).__name__
    return state


def providers_state() -> list[tuple[str, bool, str]]:
    """Each provider: (what it is, configured or not, a note). Never a secret's value."""
    from soma.providers import daraja, sandbox, stripe_connect
    from soma.providers import stripe as stripe_provider
    from soma.purchases import service as purchases

    config = current_app.config
    stripe_on = stripe_provider.configured()
    stk_keys = daraja.configured()
    stk_offered = purchases.mpesa_offered()
    daraja_host = urlsplit(config.get("MPESA_BASE_URL") or "").hostname or "?"
    return [
        (
            "Stripe Checkout (card payments)",
            stripe_on,
            "secret key and webhook secret set"
            if stripe_on
            else "needs STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET",
        ),
        (
            "Stripe Connect webhook secret",
            bool(config.get(stripe_connect.CONNECT_SECRET_SETTING)),
            "teachers can be paid through Stripe"
            if stripe_connect.configured()
            else "Stripe payouts off (needs STRIPE_SECRET_KEY and STRIPE_CONNECT_WEBHOOK_SECRET)",
        ),
        (
            "M-Pesa STK push (payments)",
            stk_offered,
            f"Daraja at {daraja_host}"
            if stk_offered
            else (
                "keys set, but MPESA_KES_PER_USD is not: not offered"
                if stk_keys
                else "needs the Daraja keys, shortcode, passkey and callback secret"
            ),
        ),
        (
            "M-Pesa B2C (payouts)",
            daraja.b2c_configured(),
            f"Daraja at {daraja_host}"
            if daraja.b2c_configured()
            else "needs the B2C shortcode, initiator, its password and the certificate",
        ),
        (
            "Sandbox (test payments and payouts)",
            sandbox.allowed(),
            (
                "offered to students: no payment provider is configured"
                if purchases.providers() == [purchases.Provider.SANDBOX]
                else "allowed, not offered to students (a real provider is configured)"
            )
            if sandbox.allowed()
            else "never in production",
        ),
    ]


def _admin_unless_database_down(view):
    """Admins only, as everywhere; but when the database cannot even say who is asking,
    answer 503 saying so (what /healthz says publicly), never a 500."""
    guarded = role_required(Role.ADMIN)(view)

    @wraps(view)
    def wrapped(*args, **kwargs):
        try:
            current_user.is_authenticated  # noqa: B018 (loads the user: a database read)
        except SQLAlchemyError:
            _quietly_rollback()
            # Unknown, so anonymous: rendering must not try the database for the user again.
            g._login_user = login_manager.anonymous_user()
            return render_template("admin/health_down.html"), 503
        return guarded(*args, **kwargs)

    return wrapped


@bp.get("/health")
@_admin_unless_database_down
def health():
    """The database, the sweeper's last pass, the rate-limit store and the providers."""
    database = database_state()
    context = {
        "database": database,
        "sweeper": sweeper_state(database["ok"]),
        "limits": rate_limit_state(),
        "providers": providers_state(),
        "ago": ago,
        "when": when,
        "checked_at": clock.now(),
    }
    if not database["ok"]:
        # The navigation counts notifications in the database: not while it is down.
        context["unread_notifications"] = lambda: 0
    return render_template("admin/health.html", **context), 200 if database["ok"] else 503
