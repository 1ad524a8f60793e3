"""Settings: defaults, then the environment (and `.env`), or a test's overrides."""

import os
import secrets
from decimal import Decimal, InvalidOperation
from pathlib import Path

from cryptography.fernet import Fernet
from dotenv import load_dotenv
from limits import parse

# Sub-accounts of each platform account (soma.ledger.shards), many more than the
# writers that run at once: two purchases meet on a shard about (writers - 1) / N of
# the time, and the one that meets waits for the other's commit or sets up its
# statement again (EvalPlanQual). With 8 workers taking turns at 16 and 128 shards, the
# database's CPU per purchase was 1.81 and 1.63 ms (1.95 and 1.80 in a second run),
# fulfilment with a bonus 0.49 and 0.54 of transfers (0.51 and 0.53).
DEFAULT_PLATFORM_SHARDS = 128

# Every setting read from the environment, with its default. `.env.example`
# lists the same names; a test keeps them in step.
ENV_SETTINGS = {
    "SOMA_ENV": "development",
    "SECRET_KEY": "",
    "DATABASE_URL": "",
    "DATABASE_POOL_PRE_PING": "0",
    "RATELIMIT_STORAGE_URI": "memory://",
    "LOGIN_RATE_LIMIT": "5 per minute",
    "TIMER_RATE_LIMIT": "300 per minute",
    "TIMER_POLL_CACHE": "",
    "PROXY_FIX_X_FOR": "0",
    "CLASS_PAUSE_LIMIT_MINUTES": "30",
    "MPESA_KES_PER_USD": "",
    "STRIPE_SECRET_KEY": "",
    "STRIPE_WEBHOOK_SECRET": "",
    "STRIPE_CONNECT_WEBHOOK_SECRET": "",
    "STRIPE_API_BASE": "",
    "MPESA_BASE_URL": "https://sandbox.safaricom.co.ke",
    "MPESA_CONSUMER_KEY": "",
    "MPESA_CONSUMER_SECRET": "",
    "MPESA_SHORTCODE": "",
    "MPESA_PASSKEY": "",
    "MPESA_CALLBACK_SECRET": "",
    "MPESA_CALLBACK_BASE": "",
    "MPESA_B2C_SHORTCODE": "",
    "MPESA_B2C_INITIATOR_NAME": "",
    "MPESA_B2C_INITIATOR_PASSWORD": "",
    "MPESA_B2C_CERT_PATH": "",
    "PAYOUT_ENCRYPTION_KEY": "",
    "WITHDRAWAL_PROCESSING_ALERT_MINUTES": "1440",
    "SUPPORT_EMAIL": "",
    "SWEEPER_STALE_SECONDS": "120",
    "AUDIT_RUN_TIMEOUT_SECONDS": "3600",
    "SOMA_PLATFORM_SHARDS": str(DEFAULT_PLATFORM_SHARDS),
    "APP_BASE_URL": "",
    "MAIL_BACKEND": "",
    "MAIL_SERVER": "localhost",
    "MAIL_PORT": "",
    "MAIL_USERNAME": "",
    "MAIL_PASSWORD": "",
    "MAIL_USE_TLS": "0",
    "MAIL_USE_SSL": "0",
    "MAIL_FROM": "",
    "MAIL_TIMEOUT_SECONDS": "10",
}

# Whom a frozen account is told to contact, outside production (production names its own).
DEFAULT_SUPPORT_EMAIL = "support@soma.example"
# Outside production: whom mail is from, and the address its links start with.
DEFAULT_MAIL_FROM = "Soma <no-reply@soma.example>"
DEFAULT_APP_BASE_URL = "http://127.0.0.1:5000"


class ConfigError(RuntimeError):
    """Raised when the settings cannot run the app safely."""


def database_uri(url: str) -> str:
    """Return a SQLAlchemy URI for `url`, using psycopg 3 for PostgreSQL."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def from_environment() -> dict:
    """Read the settings from the process environment and `.env`."""
    load_dotenv(Path.cwd() / ".env", override=False)
    return {name: os.environ.get(name, default) for name, default in ENV_SETTINGS.items()}


def build_config(settings: dict, instance_path: str) -> dict:
    """Turn raw settings into Flask configuration; raises ConfigError."""
    env = settings.get("SOMA_ENV", "development")
    if env not in ("development", "production", "testing"):
        raise ConfigError(f"SOMA_ENV must be development, production or testing, not {env!r}")
    production = env == "production"

    secret_key = settings.get("SECRET_KEY") or ""
    if not secret_key:
        if production:
            raise ConfigError("SECRET_KEY must be set when SOMA_ENV=production")
        secret_key = _instance_secret(instance_path)

    db_url = settings.get("DATABASE_URL") or ""
    if not db_url:
        if production:
            raise ConfigError("DATABASE_URL must be set when SOMA_ENV=production")
        db_url = "sqlite:///" + os.path.join(instance_path, "soma.db")

    limits_storage = settings.get("RATELIMIT_STORAGE_URI") or "memory://"
    if production and limits_storage.startswith("memory://"):
        # Each worker would keep its own counts: the per-account log-in limit would
        # allow as many guesses per account as there are workers.
        raise ConfigError(
            "RATELIMIT_STORAGE_URI must name a shared store (redis://...) when SOMA_ENV=production"
        )
    payout_key = _payout_key(settings.get("PAYOUT_ENCRYPTION_KEY") or "", env, instance_path)
    support_email = _support_email(settings.get("SUPPORT_EMAIL") or "", production)
    mail = _mail(settings, production)

    config = {
        "SOMA_ENV": env,
        "SECRET_KEY": secret_key,
        "SQLALCHEMY_DATABASE_URI": database_uri(db_url),
        # Without a pre-ping a dead connection fails one request, and SQLAlchemy
        # then replaces every pooled connection; with it, each checkout costs a
        # round trip. Recycling stops idle connections going stale.
        "SQLALCHEMY_ENGINE_OPTIONS": {
            "pool_pre_ping": _flag(settings.get("DATABASE_POOL_PRE_PING")),
            "pool_recycle": 1800,
        },
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": production,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SECURE": production,
        "PREFERRED_URL_SCHEME": "https" if production else "http",
        "WTF_CSRF_TIME_LIMIT": None,
        # No form or provider event Soma reads comes near this; a bigger body is 413.
        "MAX_CONTENT_LENGTH": 1024 * 1024,
        "RATELIMIT_STORAGE_URI": limits_storage,
        "RATELIMIT_HEADERS_ENABLED": True,
        "LOGIN_RATE_LIMIT": settings.get("LOGIN_RATE_LIMIT") or "5 per minute",
        "TIMER_RATE_LIMIT": _rate_limit(settings, "TIMER_RATE_LIMIT", "300 per minute"),
        # Each worker keeps the timer poll's reads until PostgreSQL notifies a change
        # (soma.classes.poll_cache); on unless told otherwise, but in tests.
        "TIMER_POLL_CACHE": (
            _flag(settings["TIMER_POLL_CACHE"])
            if str(settings.get("TIMER_POLL_CACHE") or "").strip()
            else env != "testing"
        ),
        "PROXY_FIX_X_FOR": int(settings.get("PROXY_FIX_X_FOR") or 0),
        "CLASS_PAUSE_LIMIT_MINUTES": _positive_int(settings, "CLASS_PAUSE_LIMIT_MINUTES", 30),
        "MPESA_KES_PER_USD": _rate(settings, "MPESA_KES_PER_USD"),
        "STRIPE_SECRET_KEY": settings.get("STRIPE_SECRET_KEY") or "",
        "STRIPE_WEBHOOK_SECRET": settings.get("STRIPE_WEBHOOK_SECRET") or "",
        "STRIPE_CONNECT_WEBHOOK_SECRET": settings.get("STRIPE_CONNECT_WEBHOOK_SECRET") or "",
        "STRIPE_API_BASE": settings.get("STRIPE_API_BASE") or "",
        **{
            name: settings.get(name) or ENV_SETTINGS[name]
            for name in ENV_SETTINGS
            if name.startswith("MPESA_") and name != "MPESA_KES_PER_USD"
        },
        "PAYOUT_ENCRYPTION_KEY": payout_key,
        "WITHDRAWAL_PROCESSING_ALERT_MINUTES": _positive_int(
            settings, "WITHDRAWAL_PROCESSING_ALERT_MINUTES", 1440
        ),
        "SUPPORT_EMAIL": support_email,
        "SWEEPER_STALE_SECONDS": _positive_int(settings, "SWEEPER_STALE_SECONDS", 120),
        "AUDIT_RUN_TIMEOUT_SECONDS": _positive_int(settings, "AUDIT_RUN_TIMEOUT_SECONDS", 3600),
        "SOMA_PLATFORM_SHARDS": _platform_shards(settings),
        **mail,
        # Tests run an audit started from /admin/audit in the request, not in a thread.
        "AUDIT_RUN_INLINE": False,
        # A callable returning the aware UTC time; tests pass a clock they move.
        "SOMA_CLOCK": None,
        "TESTING": env == "testing",
    }
    # A test passes Flask keys directly (TESTING, WTF_CSRF_ENABLED, ...).
    config.update({k: v for k, v in settings.items() if k not in ENV_SETTINGS})
    return config


def _support_email(raw: str, production: bool) -> str:
    """The address a frozen account is told to write to; ConfigError if unusable.

    Production must name a real one: a made-up address would leave a frozen user with
    nobody to ask.
    """
    email = raw.strip()
    if not email:
        if production:
            raise ConfigError("SUPPORT_EMAIL must be set when SOMA_ENV=production")
        return DEFAULT_SUPPORT_EMAIL
    local, _, domain = email.partition("@")
    if not local or "." not in domain or any(c.isspace() or ord(c) < 32 for c in email):
        raise ConfigError(f"SUPPORT_EMAIL must be an email address, not {email!r}")
    return email


def _mail(settings: dict, production: bool) -> dict:
    """The mail settings (soma.mail); ConfigError if production could not send.

    Production sends through SMTP, from a named address, with links to its own public
    address: the console backend would drop every password reset on the floor. Elsewhere
    the console backend prints each message (the default for `make run`).
    """
    backend = (settings.get("MAIL_BACKEND") or ("smtp" if production else "console")).strip()
    if backend not in ("console", "smtp"):
        raise ConfigError(f"MAIL_BACKEND must be console or smtp, not {backend!r}")
    if production and backend != "smtp":
        raise ConfigError("MAIL_BACKEND must be smtp when SOMA_ENV=production")
    sender = (settings.get("MAIL_FROM") or "").strip()
    base_url = (settings.get("APP_BASE_URL") or "").strip().rstrip("/")
    if production:
        if not sender:
            raise ConfigError("MAIL_FROM must be set when SOMA_ENV=production")
        if not base_url:
            raise ConfigError("APP_BASE_URL must be set when SOMA_ENV=production")
    if any(ord(c) < 32 for c in sender) or ("@" not in sender and sender):
        raise ConfigError(f"MAIL_FROM must be an email address, not {sender!r}")
    if base_url and not base_url.startswith(("https://", "http://")):
        raise ConfigError(f"APP_BASE_URL must start with https:// or http://, not {base_url!r}")
    use_ssl = _flag(settings.get("MAIL_USE_SSL"))
    use_tls = _flag(settings.get("MAIL_USE_TLS"))
    if use_ssl and use_tls:
        raise ConfigError("MAIL_USE_TLS (STARTTLS) and MAIL_USE_SSL cannot both be on")
    default_port = 465 if use_ssl else 587 if use_tls else 25
    port = str(settings.get("MAIL_PORT") or default_port).strip()
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"MAIL_PORT must be a port number, not {port!r}")
    return {
        "MAIL_BACKEND": backend,
        "MAIL_SERVER": (settings.get("MAIL_SERVER") or "localhost").strip(),
        "MAIL_PORT": int(port),
        "MAIL_USERNAME": settings.get("MAIL_USERNAME") or "",
        "MAIL_PASSWORD": settings.get("MAIL_PASSWORD") or "",
        "MAIL_USE_TLS": use_tls,
        "MAIL_USE_SSL": use_ssl,
        "MAIL_FROM": sender or DEFAULT_MAIL_FROM,
        "MAIL_TIMEOUT_SECONDS": _positive_int(settings, "MAIL_TIMEOUT_SECONDS", 10),
        "APP_BASE_URL": base_url or DEFAULT_APP_BASE_URL,
    }


def _rate(settings: dict, name: str) -> str:
    """A positive decimal rate, kept as text (read with Decimal); empty means unset."""
    raw = str(settings.get(name) or "").strip()
    if not raw:
        return ""
    try:
        valid = Decimal(raw) > 0
    except InvalidOperation:
        valid = False
    if not valid:
        raise ConfigError(f"{name} must be a positive number such as 129.50, not {raw!r}")
    return raw


def _positive_int(settings: dict, name: str, default: int) -> int:
    raw = str(settings.get(name) or default).strip()
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(f"{name} must be a positive whole number, not {raw!r}")
    return int(raw)


def _platform_shards(settings: dict) -> int:
    """How many sub-accounts each platform account is spread over (soma.ledger.shards)."""
    shards = _positive_int(settings, "SOMA_PLATFORM_SHARDS", DEFAULT_PLATFORM_SHARDS)
    if shards > 256:
        raise ConfigError(f"SOMA_PLATFORM_SHARDS must be 1 to 256, not {shards}")
    return shards


def _rate_limit(settings: dict, name: str, default: str) -> str:
    """A rate limit in Flask-Limiter's words ("300 per minute"), checked when the app starts."""
    raw = str(settings.get(name) or default).strip()
    try:
        allowed = parse(raw).amount
    except ValueError:
        allowed = 0
    if allowed < 1:
        raise ConfigError(f"{name} must be a rate limit such as {default!r}, not {raw!r}")
    return raw


def _flag(value) -> bool:
    """Read a yes/no setting: 1, true, yes and on are yes."""
    return str(value or "").strip().lower() in {"1", "true", "yes", "on"}


def _payout_key(raw: str, env: str, instance_path: str) -> str:
    """The Fernet key that seals bank account numbers; ConfigError if unusable.

    Production demands one from the environment: a key made up on the spot would
    leave every stored number unreadable on the next host. Development keeps one
    in the instance folder (like SECRET_KEY); a test app makes its own.
    """
    key = raw.strip()
    if not key:
        if env == "production":
            raise ConfigError("PAYOUT_ENCRYPTION_KEY must be set when SOMA_ENV=production")
        if env == "testing":
            return Fernet.generate_key().decode()
        key = _instance_secret(instance_path, "payout_encryption_key", _new_fernet_key)
    try:
        Fernet(key.encode())
    except ValueError:
        raise ConfigError(
            "PAYOUT_ENCRYPTION_KEY must be a Fernet key (32 url-safe base64-encoded bytes); "
            'make one with: python -c "from cryptography.fernet import Fernet; '
            'print(Fernet.generate_key().decode())"'
        ) from None
    return key


def _new_fernet_key() -> str:
    return Fernet.generate_key().decode()


def _instance_secret(
    instance_path: str, name: str = "secret_key", make=lambda: secrets.token_hex(32)
) -> str:
    """Return a development secret kept in the instance folder (made by `make` the first
    time), so sessions and sealed data survive restarts."""
    path = Path(instance_path) / name
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = make()
    path.write_text(key)
    path.chmod(0o600)
    return key
