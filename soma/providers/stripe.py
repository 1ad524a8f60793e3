"""The configured Stripe client (the official SDK) and webhook verification.

Configured by STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET and STRIPE_API_BASE (tests
point the last at a fake Stripe server). Knows nothing of what the money is for.
"""

import json

import stripe
from flask import current_app

StripeError = stripe.StripeError


class BadSignature(ValueError):
    """A webhook body that is not Stripe's: bad, missing or stale signature."""


class Unreadable(ValueError):
    """A webhook body Stripe signed that is not JSON (kept as malformed, never acted on)."""


def outcome_unknown(error: stripe.StripeError) -> bool:
    """Whether a request may have been done though it failed: no answer, or a server error."""
    status = getattr(error, "http_status", None)
    return isinstance(error, stripe.APIConnectionError) or (status is not None and status >= 500)


def configured() -> bool:
    config = current_app.config
    return bool(config.get("STRIPE_SECRET_KEY") and config.get("STRIPE_WEBHOOK_SECRET"))


def client() -> stripe.StripeClient:
    """The app's Stripe client, made once per app."""
    clients = current_app.extensions.setdefault("soma_stripe", {})
    if "client" not in clients:
        config = current_app.config
        base = config.get("STRIPE_API_BASE") or None
        clients["client"] = stripe.StripeClient(
            config["STRIPE_SECRET_KEY"],
            base_addresses={"api": base} if base else None,
            max_network_retries=2,
        )
    return clients["client"]


def verified_event(payload: bytes, signature: str | None, secret_setting: str):
    """The JSON Stripe signed, as plain data (the caller checks its shape).

    BadSignature if it is not Stripe's (the signature is checked first); Unreadable if
    it is, but is not JSON. `secret_setting` names the config key of the endpoint's
    signing secret (each webhook endpoint has its own).
    """
    secret = current_app.config[secret_setting]
    try:
        text = payload.decode("utf-8")
        stripe.WebhookSignature.verify_header(
            text, signature, secret, stripe.Webhook.DEFAULT_TOLERANCE
        )
    except (UnicodeDecodeError, stripe.SignatureVerificationError) as error:
        raise BadSignature(str(error)) from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:  # (RecursionError: nested too deep)
        raise Unreadable(str(error)[:80]) from None
