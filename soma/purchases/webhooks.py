"""Payment providers' webhooks: no session, no CSRF; each is authenticated by its signature."""

from flask import Blueprint, abort, jsonify, request

from soma.extensions import csrf, limiter
from soma.purchases import stripe_checkout

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
