"""Payment providers' webhooks: no session, no CSRF; each is authenticated by its signature."""

import hmac

from flask import Blueprint, abort, current_app, jsonify, request

from soma.extensions import csrf, limiter
from soma.purchases import mpesa, stripe_checkout

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


@bp.post("/stripe")
@csrf.exempt
@limiter.exempt
def stripe_events():
    """Stripe's events, verified against the raw body; 2xx once handled (or known)."""
    if not stripe_checkout.configured():
        abort(404)
    answer, status = stripe_checkout.handle_webhook(
        request.get_data(cache=False), request.headers.get("Stripe-Signature")
    )
    return jsonify(answer), status


@bp.post("/mpesa/<secret>/stk")
@csrf.exempt
@limiter.exempt
def mpesa_stk(secret: str):
    """Safaricom's STK callback; authenticated by the secret in its path (404 otherwise)."""
    expected = current_app.config.get("MPESA_CALLBACK_SECRET") or ""
    if not mpesa.configured() or not hmac.compare_digest(secret.encode(), expected.encode()):
        abort(404)
    raw = request.get_data(cache=True)
    body = request.get_json(silent=True)
    try:
        answer = mpesa.handle_callback(body if isinstance(body, dict) else {}, raw)
    except ValueError:
        return jsonify(ResultCode=1, ResultDesc="Rejected: not an STK callback"), 400
    if answer.http_status != 200:
        return jsonify(ResultCode=1, ResultDesc="Not yet: send it again"), answer.http_status
    return jsonify(ResultCode=0, ResultDesc="Accepted")
