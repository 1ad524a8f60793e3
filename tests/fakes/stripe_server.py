"""A small fake of the Stripe API, for the real `stripe` SDK to talk to in tests.

It serves the endpoints Soma calls (Checkout Sessions, refunds, payment intents;
for Connect: accounts, account and login links, transfers) on 127.0.0.1 at a free
port, replays its first answer to a repeated Idempotency-Key as Stripe does (a
refusal made while executing, like insufficient funds, included; the same key with
other parameters is an idempotency error), and signs webhook events the way Stripe
signs them. Tests move a session along (`pay`, `expire`), an account
(`update_account`) and a transfer (`reverse_transfer`), and read what was asked.
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


CONNECT_POSTS = ("/v1/accounts", "/v1/account_links", "/v1/transfers")


class Invalid(Exception):
    """A request refused before executing: Stripe keeps no answer under its key."""

    def __init__(self, message: str, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.reply = (status, {"error": {"type": "invalid_request_error", "message": message,
                                         **({"code": code} if code else {})}})  # fmt: skip


class FakeStripe(FakeServer):
    def __init__(self):
        self.accounts: dict[str, dict] = {}
        self.account_links: list[dict] = []
        self.transfers: dict[str, dict] = {}
        self.made_transfers: list[dict] = []  # the transfers made (money moved), in order
        self.platform_available = 10_000_000  # the platform's available balance, cents
        # Make the next transfers, then lose their answers (500, as if Stripe's answer
        # never came back): the transfer exists, and its key replays it afterwards.
        self.lose_transfer_answers = 0
        self.sessions: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.made_refunds: list[dict] = []
        self.refund_objects: dict[str, dict] = {}
        self.replies: dict[str, tuple[int, dict]] = {}
        self.lock = threading.Lock()
        self.fail_next = 0
        fake = self

        class Handler(JsonHandler):
            should_retry: str | None = None

            def extra_headers(self):
                headers = {"Request-Id": "req_" + secrets.token_hex(6)}
                if self.should_retry:
                    headers["Stripe-Should-Retry"] = self.should_retry
                return headers

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
                    try:
                        if self.path == "/v1/checkout/sessions":
                            reply = (200, fake._create_session(params))
                        elif self.path == "/v1/refunds":
                            reply = (200, fake._create_refund(params))
                        elif self.path in CONNECT_POSTS or self.path.endswith("/login_links"):
                            reply = fake._connect_post(self.path, params)
                        else:
                            return self._reply(404, {"error": {"type": "invalid_request_error"}})
                    except Invalid as invalid:
                        return self._reply(*invalid.reply)
                    if key:
                        fake.replies[key] = (params, reply)
                    made = self.path == "/v1/transfers" and reply[0] == 200
                    if made and fake.lose_transfer_answers:
                        fake.lose_transfer_answers -= 1
                        self.should_retry = "false"  # (as Stripe marks its 500s)
                        lost = {"type": "api_error", "message": "answer lost"}
                        return self._reply(500, {"error": lost})
                return self._reply(*reply)

            def do_GET(self):
                with fake.lock:
                    fake.requests.append({"method": "GET", "path": self.path})
                    if self.path.startswith(("/v1/accounts/", "/v1/transfers")):
                        return self._reply(*fake._connect_get(self.path))
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

    # Connect: accounts, links, transfers ------------------------------------------------

    def _connect_post(self, path: str, params: dict) -> tuple[int, dict]:
        if path == "/v1/accounts":
            return 200, self._create_account(params)
        if path == "/v1/account_links":
            return 200, self._create_account_link(params)
        if path == "/v1/transfers":
            return self._create_transfer(params)
        account_id = path.split("/")[3]
        if path.startswith("/v1/accounts/") and account_id in self.accounts:
            url = f"{self.url}/express/{account_id}/{secrets.token_hex(6)}"
            return 200, {"object": "login_link", "created": int(time.time()), "url": url}
        raise Invalid(f"No such account: '{account_id}'", "resource_missing", 404)

    def _create_account(self, params: dict) -> dict:
        controller = params.get("controller", {})
        if "type" in params and controller:
            raise Invalid("You cannot pass `type` together with `controller`.")
        if controller.get("losses", {}).get("payments") == "application" and (
            controller.get("fees", {}).get("payer") != "application"
        ):
            raise Invalid("controller[losses][payments]=application needs fees[payer]=application")
        requested = params.get("capabilities", {})
        due = ["business_type", "external_account", "individual.dob.day",
               "individual.dob.month", "individual.first_name", "tos_acceptance.date"]  # fmt: skip
        account = {
            "id": "acct_" + secrets.token_hex(8),
            "object": "account",
            "type": "express",
            "controller": {**controller, "is_controller": True, "type": "application"},
            "capabilities": {
                name: "inactive"
                for name, asked in requested.items()
                if asked.get("requested") == "true"
            },
            "charges_enabled": False,
            "payouts_enabled": False,
            "details_submitted": False,
            "country": params.get("country", "US"),
            "email": params.get("email"),
            "metadata": params.get("metadata", {}),
            "requirements": {
                "currently_due": list(due),
                "eventually_due": list(due),
                "past_due": list(due),
                "pending_verification": [],
                "disabled_reason": "requirements.past_due",
                "current_deadline": None,
                "errors": [],
            },
            "created": int(time.time()),
        }
        self.accounts[account["id"]] = account
        return account

    def _create_account_link(self, params: dict) -> dict:
        account = self.accounts.get(params.get("account"))
        if account is None:
            raise Invalid(f"No such account: '{params.get('account')}'", "resource_missing")
        if not params.get("refresh_url") or not params.get("return_url"):
            raise Invalid("Missing required param: refresh_url / return_url.")
        if params.get("type") == "account_update" and (
            account["controller"].get("stripe_dashboard", {}).get("type") == "express"
        ):
            raise Invalid("You cannot create `account_update` links for this account.")
        if params.get("type") != "account_onboarding":
            raise Invalid("Invalid type: must be account_onboarding or account_update.")
        now = int(time.time())
        link = {
            "object": "account_link",
            "created": now,
            "expires_at": now + 300,
            "url": f"{self.url}/setup/{params['account']}/{secrets.token_hex(8)}",
        }
        self.account_links.append({**params, "url": link["url"]})
        return link

    def _create_transfer(self, params: dict) -> tuple[int, dict]:
        amount = params.get("amount", "")
        if not amount.isdigit() or int(amount) <= 0:
            raise Invalid("Invalid positive integer", "parameter_invalid_integer")
        if params.get("currency") != "usd":
            raise Invalid("Invalid currency", "parameter_invalid_string")
        account = self.accounts.get(params.get("destination"))
        if account is None:
            raise Invalid(f"No such destination: '{params.get('destination')}'")
        if account["capabilities"].get("transfers") != "active":
            return 400, {"error": {
                "type": "invalid_request_error", "code": "insufficient_capabilities_for_transfer",
                "message": "Your destination account needs to have at least one of the "
                "following capabilities enabled: transfers, crypto_transfers, legacy_payments",
            }}  # fmt: skip
        if int(amount) > self.platform_available:
            return 400, {"error": {
                "type": "invalid_request_error", "code": "balance_insufficient",
                "message": "You have insufficient available funds in your Stripe account. "
                "Try adding funds directly to your available balance.",
            }}  # fmt: skip
        self.platform_available -= int(amount)
        transfer = {
            "id": "tr_" + secrets.token_hex(10),
            "object": "transfer",
            "amount": int(amount),
            "amount_reversed": 0,
            "currency": "usd",
            "destination": account["id"],
            "transfer_group": params.get("transfer_group"),
            "description": params.get("description"),
            "metadata": params.get("metadata", {}),
            "reversed": False,
            "reversals": {"object": "list", "data": [], "has_more": False, "url": "/v1/x"},
            "created": int(time.time()),
        }
        self.transfers[transfer["id"]] = transfer
        self.made_transfers.append(transfer)
        return 200, transfer

    def _connect_get(self, path: str) -> tuple[int, dict]:
        route, _, query = path.partition("?")
        if route.startswith("/v1/accounts/") and route[13:] in self.accounts:
            return 200, self.accounts[route[13:]]
        if route == "/v1/transfers":
            group = dict(parse_qsl(query)).get("transfer_group")
            listed = [t for t in reversed(self.made_transfers) if t["transfer_group"] == group]
            return 200, {"object": "list", "data": listed, "has_more": False,
                         "url": "/v1/transfers"}  # fmt: skip
        if route.startswith("/v1/transfers/") and route[14:] in self.transfers:
            return 200, self.transfers[route[14:]]
        return 404, {"error": {"type": "invalid_request_error", "code": "resource_missing",
                               "message": f"No such object: {route}"}}  # fmt: skip

    def update_account(
        self, account_id: str, *, transfers: str | None = None,
        payouts_enabled: bool | None = None, currently_due: list[str] | None = None,
        past_due: list[str] | None = None, disabled_reason: str | None = "keep",
    ) -> dict:  # fmt: skip
        """The account as Stripe has it after onboarding moved it (for `account.updated`)."""
        with self.lock:
            account = self.accounts[account_id]
            if transfers is not None:
                account["capabilities"]["transfers"] = transfers
            if payouts_enabled is not None:
                account["payouts_enabled"] = payouts_enabled
            requirements = account["requirements"]
            if currently_due is not None:
                requirements["currently_due"] = list(currently_due)
            if past_due is not None:
                requirements["past_due"] = list(past_due)
            if disabled_reason != "keep":
                requirements["disabled_reason"] = disabled_reason
            return json.loads(json.dumps(account))

    def reverse_transfer(self, transfer_id: str, amount: int | None = None) -> dict:
        """Reverse (part of) a transfer, as from the dashboard; the transfer after it."""
        with self.lock:
            transfer = self.transfers[transfer_id]
            amount = amount or transfer["amount"] - transfer["amount_reversed"]
            transfer["amount_reversed"] += amount
            transfer["reversed"] = transfer["amount_reversed"] == transfer["amount"]
            transfer["reversals"]["data"].append(
                {"id": "trr_" + secrets.token_hex(8), "object": "transfer_reversal",
                 "amount": amount, "transfer": transfer_id}
            )  # fmt: skip
            self.platform_available += amount
            return json.loads(json.dumps(transfer))

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


def event(kind: str, obj: dict, event_id: str | None = None, account: str | None = None) -> dict:
    """An event as Stripe sends it; `account` names the connected account of a Connect one."""
    body = {
        "id": event_id or "evt_" + secrets.token_hex(10),
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "livemode": False,
        "api_version": "2025-01-27.acacia",
        "data": {"object": obj},
    }
    if account is not None:
        body["account"] = account
    return body


def failed_payout(
    amount: int, failure_code: str = "account_closed",
    failure_message: str = "The bank account has been closed.",
) -> dict:  # fmt: skip
    """A connected account's payout to its bank that failed (`payout.failed`'s object)."""
    return {
        "id": "po_" + secrets.token_hex(10),
        "object": "payout",
        "amount": amount,
        "currency": "usd",
        "status": "failed",
        "failure_code": failure_code,
        "failure_message": failure_message,
        "arrival_date": int(time.time()),
    }


def signed(payload: dict | str, secret: str, timestamp: int | None = None) -> tuple[bytes, str]:
    """The body and Stripe-Signature header Stripe would send for `payload`."""
    body = payload if isinstance(payload, str) else json.dumps(payload)
    stamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{stamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return body.encode(), f"t={stamp},v1={mac}"
