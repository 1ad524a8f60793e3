"""Soma: the token economy of a live-tutoring marketplace."""

from pathlib import Path

from flask import Flask
from sqlalchemy import event
from sqlalchemy.orm import configure_mappers
from werkzeug.middleware.proxy_fix import ProxyFix

from soma.config import build_config, from_environment
from soma.extensions import csrf, db, limiter, login_manager, migrate

MIGRATIONS_DIR = str(Path(__file__).resolve().parent.parent / "migrations")


def create_app(config: dict | None = None) -> Flask:
    """Create the app from the environment, or from `config` alone (tests)."""
    app = Flask(
        __name__,
        template_folder="../templates",
        static_folder="../static",
        instance_relative_config=True,
    )
    settings = from_environment() if config is None else dict(config)
    app.config.update(build_config(settings, app.instance_path))

    register_extensions(app)
    register_converters(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_commands(app)
    register_hooks(app)

    # The class timer's common poll is answered beneath Flask's request machinery
    # (soma.classes.fast_poll); inside ProxyFix, so it sees the client's address.
    from soma.classes.fast_poll import TimerPoll

    app.wsgi_app = TimerPoll(app, app.wsgi_app)
    if app.config["PROXY_FIX_X_FOR"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=app.config["PROXY_FIX_X_FOR"], x_proto=1)
    # The models' mappers now, not on the first query: a worker's first request and a
    # CLI command's (the audit's) work then pay nothing for it (about 40 ms).
    configure_mappers()
    return app


def register_extensions(app: Flask) -> None:
    """Bind the unbound extensions to `app`."""
    db.init_app(app)
    migrate.init_app(
        app, db, directory=MIGRATIONS_DIR, render_as_batch=True, compare_server_default=True
    )
    csrf.init_app(app)
    limiter.init_app(app)

    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please log in to see that page."
    login_manager.login_message_category = "info"
    login_manager.session_protection = "strong"

    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", _sqlite_pragmas)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """Make SQLite enforce foreign keys and wait for locks instead of failing.

    Write-ahead logging lets the web server read while the sweeper writes, and with
    `synchronous=NORMAL` a commit waits for no disk flush (one per checkpoint): a
    power cut can lose the last commits, never corrupt the file. SQLite is for
    development and `make run`; production is PostgreSQL.
    """
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def register_converters(app: Flask) -> None:
    """The URL converters routes use: `id(table)`, an id its column can hold."""
    from soma.inputs import register

    register(app)


def register_blueprints(app: Flask) -> None:
    """Attach each feature's blueprint."""
    from soma.admin.pages import bp as admin_bp
    from soma.auth.routes import bp as auth_bp
    from soma.classes.routes import bp as classes_bp
    from soma.earnings.routes import bp as earnings_bp
    from soma.gifts.routes import bp as gifts_bp
    from soma.main.routes import bp as main_bp
    from soma.notifications.routes import bp as notifications_bp
    from soma.payouts.routes import bp as payouts_bp
    from soma.purchases.routes import bp as purchases_bp
    from soma.purchases.webhooks import bp as webhooks_bp
    from soma.wallet.routes import bp as wallet_bp

    app.register_blueprint(main_bp)
    app.register_blueprint(auth_bp)
    app.register_blueprint(wallet_bp)
    app.register_blueprint(gifts_bp)
    app.register_blueprint(classes_bp)
    app.register_blueprint(earnings_bp)
    app.register_blueprint(purchases_bp)
    app.register_blueprint(payouts_bp)
    app.register_blueprint(webhooks_bp)
    app.register_blueprint(notifications_bp)
    app.register_blueprint(admin_bp)


def register_errorhandlers(app: Flask) -> None:
    """Render every error in the site's layout."""
    from soma.errors import register

    register(app)


def register_commands(app: Flask) -> None:
    """Add the `flask soma ...` commands."""
    from soma.cli import soma_cli

    app.cli.add_command(soma_cli)


def register_hooks(app: Flask) -> None:
    """Security headers and template helpers."""
    from soma import badges, layout
    from soma.money import register_money_filters
    from soma.security import register

    register(app)
    register_money_filters(app)
    badges.register(app)
    layout.register(app)
