"""A small fake of the Stripe API, for the real `stripe` SDK to talk to in tests.

It serves the endpoints Soma calls (create and retrieve a Checkout Session) on
127.0.0.1 at a free port, replays its first answer to a repeated
Idempotency-Key as Stripe does, and signs webhook events the way Stripe signs
them. Tests move a session along (`pay`, `expire`) and read what was asked.
"""

import hashlib
import hmac
import json
import secrets
import threading
import time
from urllib.parse import parse_qsl

from tests.fakes import FakeServer, JsonHandler


def unflatten(pairs: list[tuple[str, str]]) -> dict:
    """Stripe's form encoding (a[b][0][c]=v) back into nested dicts and lists."""
    root: dict = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _lists(root)


def _lists(node):
    if isinstance(node, dict):
        if node and all(k.isdigit() for k in node):
            return [_lists(node[k]) for k in sorted(node, key=int)]
        return {k: _lists(v) for k, v in node.items()}
    return node


class FakeStripe(FakeServer):
    def __init__(self):
        self.sessions: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.made_refunds: list[dict] = []
        self.refund_objects: dict[str, dict] = {}
        self.replies: dict[str, tuple[int, dict]] = {}
        self.lock = threading.Lock()
        self.fail_next = 0
        fake = self

        class Handler(JsonHandler):
            def extra_headers(self):
                return {"Request-Id": "req_" + secrets.token_hex(6)}

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                params = unflatten(
                    parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True)
                )
                key = self.headers.get("Idempotency-Key")
                with fake.lock:
                    fake.requests.append(
                        {
                            "method": "POST",
                            "path": self.path,
                            "params": params,
                            "idempotency_key": key,
                            "authorization": self.headers.get("Authorization"),
                        }
                    )
                    if key and key in fake.replies:
                        sent, reply = fake.replies[key]
                        if sent != params:  # as Stripe: a key is for one request only
                            error = {
                                "type": "idempotency_error",
                                "message": "Keys for idempotent requests can only be used "
                                "with the same parameters they were first used with.",
                            }
                            return self._reply(400, {"error": error})
                        return self._reply(*reply)
                    if fake.fail_next:
                        fake.fail_next -= 1
                        return self._reply(500, {"error": {"type": "api_error", "message": "down"}})
                    if self.path == "/v1/checkout/sessions":
                        reply = (200, fake._create_session(params))
                    elif self.path == "/v1/refunds":
                        reply = (200, fake._create_refund(params))
                    else:
                        return self._reply(404, {"error": {"type": "invalid_request_error"}})
                    if key:
                        fake.replies[key] = (params, reply)
                return self._reply(*reply)

            def do_GET(self):
                with fake.lock:
                    fake.requests.append({"method": "GET", "path": self.path})
                    if self.path.startswith("/v1/refunds?"):
                        query = dict(parse_qsl(self.path.split("?", 1)[1]))
                        listed = [
                            refund
                            for refund in fake.refund_objects.values()
                            if refund["payment_intent"] == query.get("payment_intent")
                        ]
                        return self._reply(
                            200,
                            {"object": "list", "data": listed, "has_more": False,
                             "url": "/v1/refunds"},
                        )  # fmt: skip
                    intents = "/v1/payment_intents/"
                    if self.path.startswith(intents):
                        intent_id = self.path.split("?")[0][len(intents) :]
                        for session in fake.sessions.values():
                            if session["payment_intent"] == intent_id:
                                return self._reply(
                                    200,
                                    {
                                        "id": intent_id,
                                        "object": "payment_intent",
                                        "metadata": session["metadata"],
                                    },
                                )
                    prefix = "/v1/checkout/sessions/"
                    session_id = self.path.split("?")[0][len(prefix) :]
                    if self.path.startswith(prefix) and session_id in fake.sessions:
                        return self._reply(200, fake.sessions[session_id])
                missing = {"type": "invalid_request_error", "message": "No such checkout session"}
                return self._reply(404, {"error": missing})

        self._serve(Handler)

    def _create_session(self, params: dict) -> dict:
        session_id = "cs_test_" + secrets.token_hex(12)
        (item,) = params["line_items"]
        amount = int(item["price_data"]["unit_amount"]) * int(item["quantity"])
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": params["mode"],
            "status": "open",
            "payment_status": "unpaid",
            "amount_total": amount,
            "currency": item["price_data"]["currency"],
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata", {}),
            "payment_intent": None,
            "success_url": params["success_url"],
            "cancel_url": params["cancel_url"],
            "url": f"{self.url}/pay/{session_id}",
        }
        self.sessions[session_id] = session
        return session

    def _create_refund(self, params: dict) -> dict:
        self.made_refunds.append(params)
        refund = {
            "id": "re_" + secrets.token_hex(10),
            "object": "refund",
            "amount": int(params["amount"]),
            "payment_intent": params["payment_intent"],
            "metadata": params.get("metadata", {}),
            "status": self.refund_status_on_create,
            "created": int(time.time()),
        }
        self.refund_objects[refund["id"]] = refund
        return refund

    refund_status_on_create = "succeeded"

    def refund(self, refund_id: str, **changes) -> dict:
        """A refund as Stripe now has it, changed by `changes` (a later status, say)."""
        with self.lock:
            self.refund_objects[refund_id].update(changes)
            return dict(self.refund_objects[refund_id])

    def add_refund(self, payment_intent: str, amount: int, status: str = "succeeded") -> dict:
        """A refund made at Stripe, as from its dashboard: Soma hears of it by webhook."""
        with self.lock:
            refund = {
                "id": "re_" + secrets.token_hex(10),
                "object": "refund",
                "amount": amount,
                "payment_intent": payment_intent,
                "metadata": {},
                "status": status,
                "created": int(time.time()),
            }
            self.refund_objects[refund["id"]] = refund
            return dict(refund)

    def refunds(self) -> list[dict]:
        """The refunds made (a refused request makes none)."""
        return list(self.made_refunds)

    # Moving a session along, as the customer and Stripe would --------------------------

    def pay(self, session_id: str, payment_status: str = "paid") -> dict:
        with self.lock:
            session = self.sessions[session_id]
            intent = session["payment_intent"] or "pi_" + secrets.token_hex(8)
            session.update(status="complete", payment_status=payment_status, payment_intent=intent)
            return dict(session)

    def settle_async(self, session_id: str) -> dict:
        with self.lock:
            self.sessions[session_id]["payment_status"] = "paid"
            return dict(self.sessions[session_id])

    def expire(self, session_id: str) -> dict:
        with self.lock:
            self.sessions[session_id].update(status="expired")
            return dict(self.sessions[session_id])

    def created(self) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST"]


def event(kind: str, obj: dict, event_id: str | None = None) -> dict:
    return {
        "id": event_id or "evt_" + secrets.token_hex(10),
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "livemode": False,
        "api_version": "2025-01-27.acacia",
        "data": {"object": obj},
    }


def signed(payload: dict | str, secret: str, timestamp: int | None = None) -> tuple[bytes, str]:
    """The body and Stripe-Signature header Stripe would send for `payload`."""
    body = payload if isinstance(payload, str) else json.dumps(payload)
    stamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{stamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return body.encode(), f"t={stamp},v1={mac}"
