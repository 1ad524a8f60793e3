"""Payment providers' webhooks: no session, no CSRF; each is authenticated by its signature.

Each classifies its body before anything acts on it: an authentic but malformed body
is kept as ignored, with the reason, and answered 400. The only 5xx a provider ever
gets is the deliberate 503 "send it again later": an event that cannot be acted on
yet, or a failure on our side (the database is down, a bug), which is logged, rolled
back, and so left for the provider's retry instead of lost.
"""

import hmac
import json
from functools import wraps

from flask import Blueprint, abort, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from soma.extensions import csrf, db, limiter
from soma.models import MethodKind
from soma.payouts import mpesa_events
from soma.payouts import stripe_events as payout_events
from soma.payouts.rails import RAILS
from soma.providers import stripe_connect
from soma.purchases import mpesa, stripe_checkout

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


def retry_later_on_failure(answer_retry):
    """On an unexpected error, roll back, log it, and answer `answer_retry()` with 503."""

    def decorator(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            try:
                return view(*args, **kwargs)
            except HTTPException:
                raise  # (a 404 for an unknown secret, a 413 for a body too large)
            except Exception:
                db.session.rollback()
                current_app.logger.exception("%s failed; asking again", view.__name__)
                return answer_retry(), 503

        return wrapped

    return decorator


@bp.post("/stripe")
@csrf.exempt
@limiter.exempt
@retry_later_on_failure(lambda: jsonify(error="an error on our side: send it again"))
def stripe_events():
    """Stripe's events, verified against the raw body; 2xx once handled (or known)."""
    if not stripe_checkout.configured():
        abort(404)
    answer, status = stripe_checkout.handle_webhook(
        request.get_data(cache=False), request.headers.get("Stripe-Signature")
    )
    return jsonify(answer), status


@bp.post("/stripe/connect")
@csrf.exempt
@limiter.exempt
@retry_later_on_failure(lambda: jsonify(error="an error on our side: send it again"))
def stripe_connect_events():
    """Stripe Connect's events (connected accounts'), verified with the Connect endpoint's
    own signing secret; 2xx once handled (or known)."""
    if not stripe_connect.configured():
        abort(404)
    answer, status = payout_events.handle_connect_webhook(
        request.get_data(cache=False), request.headers.get("Stripe-Signature")
    )
    return jsonify(answer), status


@bp.post("/mpesa/<secret>/stk")
@csrf.exempt
@limiter.exempt
@retry_later_on_failure(
    lambda: jsonify(ResultCode=1, ResultDesc="Not yet: an error on our side; send it again")
)
def mpesa_stk(secret: str):
    """Safaricom's STK callback; authenticated by the secret in its path (404 otherwise)."""
    expected = current_app.config.get("MPESA_CALLBACK_SECRET") or ""
    if not mpesa.configured() or not hmac.compare_digest(secret.encode(), expected.encode()):
        abort(404)
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested too deep: malformed
        body = None
    answer = mpesa.handle_callback(body, raw)
    if answer.http_status == 400:
        return jsonify(ResultCode=1, ResultDesc="Rejected: not an STK callback"), 400
    if answer.http_status != 200:
        return jsonify(ResultCode=1, ResultDesc="Not yet: send it again"), answer.http_status
    return jsonify(ResultCode=0, ResultDesc="Accepted")


B2C_CALLBACKS = {
    "result": "result",
    "timeout": "timeout",
    "status/result": "status-result",
    "status/timeout": "status-timeout",
}


@bp.post("/mpesa/<secret>/b2c/<path:callback>")
@csrf.exempt
@limiter.exempt
@retry_later_on_failure(
    lambda: jsonify(ResultCode=1, ResultDesc="Not yet: an error on our side; send it again")
)
def mpesa_b2c(secret: str, callback: str):
    """M-Pesa B2C's callbacks (a payout's result or time-out, the status query's answer);
    authenticated by the secret in the path (404 otherwise)."""
    expected = current_app.config.get("MPESA_CALLBACK_SECRET") or ""
    kind = B2C_CALLBACKS.get(callback)
    if (
        kind is None
        or not RAILS[MethodKind.MPESA].offered()
        or not hmac.compare_digest(secret.encode(), expected.encode())
    ):
        abort(404)
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        body = None
    answer = mpesa_events.handle(kind, body, raw)
    if answer.http_status == 400:
        return jsonify(ResultCode=1, ResultDesc="Rejected: not a B2C callback"), 400
    if answer.http_status != 200:
        return jsonify(ResultCode=1, ResultDesc="Not yet: send it again"), answer.http_status
    return jsonify(ResultCode=0, ResultDesc="Accepted")
