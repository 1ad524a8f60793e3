"""Webhooks classify before they act: an authentic but malformed body is kept as ignored,
with the reason, and answered 400; it moves nothing and never blocks the real event."""

import json

import pytest
from sqlalchemy import func, select

from soma.audit import run_audit
from soma.extensions import db
from soma.models import JournalEntry, Posting, ProviderEvent, Purchase, Wallet
from tests.buying import checkout, credits_of, mpesa_settings, package_id, post_event
from tests.fakes.daraja_server import FakeDaraja, callback
from tests.fakes.stripe_server import event
from tests.helpers import csrf_from, text_of

CALLBACK_SECRET = "cb-" + "classify" * 4


def money_rows(app) -> tuple:
    """Entries, postings, and every wallet's balances: what a webhook may move."""
    with app.app_context():
        wallets = db.session.execute(
            select(Wallet.id, Wallet.available, Wallet.locked).order_by(Wallet.id)
        ).all()
        return (
            db.session.scalar(select(func.count()).select_from(JournalEntry)),
            db.session.scalar(select(func.count()).select_from(Posting)),
            [tuple(row) for row in wallets],
        )


def kept(app, provider: str) -> list[tuple[str, str, str, str]]:
    """The provider's kept events: (event id, kind, status, note)."""
    with app.app_context():
        rows = db.session.execute(
            select(
                ProviderEvent.event_id, ProviderEvent.kind, ProviderEvent.status, ProviderEvent.note
            )
            .where(ProviderEvent.provider == provider)
            .order_by(ProviderEvent.id)
        ).all()
        return [tuple(row) for row in rows]


# Stripe --------------------------------------------------------------------------------------

TOO_LONG = "evt_" + "9" * 300
OBJECT = {"id": "cs_test_1", "object": "checkout.session"}
MALFORMED_STRIPE = {
    "empty": ({}, "no event id"),
    "no type": ({"id": "evt_m1", "data": {"object": OBJECT}}, "no event type"),
    "no data": ({"id": "evt_m2", "type": "checkout.session.completed"}, "no data.object"),
    "no object": ({"id": "evt_m3", "type": "x", "data": {}}, "no data.object"),
    "object is text": ({"id": "evt_m4", "type": "x", "data": {"object": "t"}}, "no data.object"),
    "no object id": (event("checkout.session.completed", {}), "no id"),
    "object id with NUL": (event("refund.created", {"id": "re_\x00", "amount": 5}), "no id"),
    "event id too long": ({"id": TOO_LONG, "type": "x", "data": {"object": OBJECT}}, "event id"),
    "event id with NUL": ({"id": "evt_\x00", "type": "x", "data": {"object": OBJECT}}, "event id"),
    "event id a number": ({"id": 7, "type": "x", "data": {"object": OBJECT}}, "event id"),
    "metadata id over BIGINT": (
        event("checkout.session.completed", {**OBJECT, "metadata": {"purchase_id": str(2**63)}}),
        "purchase id out of range",
    ),
    "metadata id of 40 digits": (
        event("checkout.session.completed", {**OBJECT, "metadata": {"purchase_id": "9" * 40}}),
        "purchase id out of range",
    ),
    "metadata id zero": (
        event("checkout.session.completed", {**OBJECT, "metadata": {"purchase_id": "0"}}),
        "purchase id out of range",
    ),
    "metadata id a list": (
        event("checkout.session.completed", {**OBJECT, "metadata": {"purchase_id": ["1"]}}),
        "not text",
    ),
    "payment intent a list": (
        event("charge.dispute.created", {"id": "dp_1", "payment_intent": ["pi_1"]}),
        "payment_intent",
    ),
    "refund id with NUL": (
        event("refund.updated", {"id": "re_\x00", "payment_intent": "pi_1", "amount": 5}),
        "no id",
    ),
    "listed refund without id": (
        event("charge.refunded", {"id": "ch_1", "refunds": {"data": [{"amount": 5}]}}),
        "refund without an id",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_STRIPE))
def test_a_signed_malformed_stripe_event_is_kept_as_ignored_and_answered_400(
    app, client, stripe_on, case
):
    payload, reason = MALFORMED_STRIPE[case]
    before = money_rows(app)
    first, again = post_event(client, payload), post_event(client, payload)
    assert first.status_code == again.status_code == 400
    assert first.get_json()["status"] == "malformed"
    (row,) = kept(app, "stripe")  # the same body twice is one record
    event_id, kind, status, note = row
    assert event_id.startswith("malformed:") and len(event_id) == len("malformed:") + 64
    assert (kind, status) == ("malformed", "ignored")
    assert note.startswith("malformed: ") and reason in note
    assert "\x00" not in note
    with app.app_context():
        body = db.session.scalar(select(ProviderEvent.body))
        assert "\x00" not in body and json.loads(body.replace("\\u0000", "")) is not None
    assert money_rows(app) == before
    with app.app_context():
        assert run_audit() == []


def test_a_badly_signed_event_is_refused_and_kept_nowhere(app, client, stripe_on):
    response = post_event(client, {}, secret="whsec_someone_else")
    assert response.status_code == 400
    assert kept(app, "stripe") == []


def test_a_malformed_body_never_takes_the_place_of_the_real_event_of_its_id(
    app, client, auth, stripe_on
):
    auth.login_as("student")
    purchase_id, session_id = checkout(app, client)
    session = stripe_on.pay(session_id)
    real = event("checkout.session.completed", session)
    broken = {"id": real["id"], "type": real["type"], "data": {"object": {"id": 5}}}
    assert post_event(client, broken).status_code == 400
    with app.app_context():
        assert db.session.get(Purchase, purchase_id).status == "pending"
    answer = post_event(client, real)
    assert answer.status_code == 200 and answer.get_json() == {
        "received": True,
        "status": "handled",
    }
    assert credits_of(app, purchase_id) == [("purchase", 100)]
    statuses = [(status, event_id == real["id"]) for event_id, _, status, _ in kept(app, "stripe")]
    assert statuses == [("ignored", False), ("handled", True)]


def test_a_paid_session_naming_a_purchase_out_of_range_credits_nothing(
    app, client, auth, stripe_on
):
    auth.login_as("student")
    purchase_id, session_id = checkout(app, client)
    session = stripe_on.pay(session_id)
    before = money_rows(app)
    for reference in (str(2**63), "0", "9" * 40):  # our key, but no id: malformed
        forged = {**session, "metadata": {"purchase_id": reference}, "client_reference_id": None}
        assert post_event(client, event("checkout.session.completed", forged)).status_code == 400
    # Another integration's references on the same Stripe account: not ours, ignored.
    for reference in ("-4", "1e3", "\u00b2", "order-77"):
        forged = {
            **session,
            "metadata": {"purchase_id": reference},
            "client_reference_id": reference,
        }
        answer = post_event(client, event("checkout.session.completed", forged))
        assert answer.status_code == 200 and answer.get_json()["status"] == "ignored"
    assert money_rows(app) == before
    assert credits_of(app, purchase_id) == []
    notes = [note for _, _, status, note in kept(app, "stripe") if status == "ignored"]
    assert sum(note.endswith("is not one of our purchases") for note in notes) == 4


# M-Pesa --------------------------------------------------------------------------------------


@pytest.fixture
def daraja(app):
    fake = FakeDaraja().start()
    app.config.update(mpesa_settings(fake.url, CALLBACK_SECRET))
    yield fake
    fake.stop()


def send(client, body, secret: str = CALLBACK_SECRET):
    if isinstance(body, bytes | str):
        return client.post(
            f"/webhooks/mpesa/{secret}/stk", data=body, content_type="application/json"
        )
    return client.post(f"/webhooks/mpesa/{secret}/stk", json=body)


def with_items(checkout_id: str, items) -> dict:
    body = callback(checkout_id, "0", amount=1295, receipt="NLJ7RT61SV")
    body["Body"]["stkCallback"]["CallbackMetadata"]["Item"] = items
    return body


def with_amount(checkout_id: str, amount) -> dict:
    body = callback(checkout_id, "0", amount=1295, receipt="NLJ7RT61SV")
    body["Body"]["stkCallback"]["CallbackMetadata"]["Item"][0]["Value"] = amount
    return body


MALFORMED_MPESA = {
    "Item a string": (lambda cid: with_items(cid, "Amount=1295"), "Item"),
    "Item of strings": (lambda cid: with_items(cid, ["Amount"]), "Item"),
    "Amount abc": (lambda cid: with_amount(cid, "abc"), "Amount"),
    "Amount NaN": (lambda cid: with_amount(cid, "NaN"), "Amount"),
    "Amount 1e999999999": (lambda cid: with_amount(cid, "1e999999999"), "Amount"),
    "Amount negative": (lambda cid: with_amount(cid, -1295), "Amount"),
    "CheckoutRequestID with NUL": (lambda cid: callback(cid + "\x00", "0", 1295), "Checkout"),
    "CheckoutRequestID of 300": (lambda cid: callback("ws_" + "C" * 297, "0", 1295), "Checkout"),
    "CheckoutRequestID a number": (lambda cid: callback(12, "0", 1295), "Checkout"),
    "ResultCode text": (
        lambda cid: {"Body": {"stkCallback": {"CheckoutRequestID": cid, "ResultCode": "x"}}},
        "ResultCode",
    ),
    "ResultDesc with NUL": (lambda cid: callback(cid, "1032", desc="no\x00"), "ResultDesc"),
    "receipt with NUL": (
        lambda cid: callback(cid, "0", amount=1295, receipt="NLJ\x00"),
        "MpesaReceiptNumber",
    ),
    "empty object": (lambda cid: {}, "stkCallback"),
    "a list": (lambda cid: [1, 2], "stkCallback"),
    "not JSON": (lambda cid: b"\x00\xff not json", "stkCallback"),
}


@pytest.mark.parametrize("case", list(MALFORMED_MPESA))
def test_an_mpesa_callback_with_the_right_secret_but_malformed_is_kept_and_answered_400(
    app, client, auth, daraja, case
):
    auth.login_as("student")
    page = client.get("/buy/").get_data(as_text=True)
    response = client.post(
        "/buy/",
        data={
            "csrf_token": csrf_from(page),
            "package": str(package_id(app, 100)),
            "provider": "mpesa",
            "phone": "0712345678",
            "key": "classify-1",
        },
    )
    assert response.status_code == 303, text_of(response.get_data(as_text=True))
    purchase_id = int(response.headers["Location"].rsplit("/", 1)[1])
    checkout_id = daraja.pushes[-1]["CheckoutRequestID"]
    daraja.finish(checkout_id, "0")
    make, reason = MALFORMED_MPESA[case]
    body = make(checkout_id)
    before = money_rows(app)

    answer = send(client, body)
    assert answer.status_code == 400
    assert answer.get_json() == {"ResultCode": 1, "ResultDesc": "Rejected: not an STK callback"}
    (row,) = kept(app, "mpesa")
    assert row[0].startswith("malformed:") and row[1:3] == ("malformed", "ignored")
    assert reason in row[3] and "\x00" not in row[3]
    assert money_rows(app) == before
    with app.app_context():
        assert db.session.get(Purchase, purchase_id).status == "pending"

    # The real callback of that request is still acted on: credited once.
    good = callback(checkout_id, "0", amount=1295, receipt="NLJ7RT61SV")
    assert send(client, good).get_json() == {"ResultCode": 0, "ResultDesc": "Accepted"}
    assert credits_of(app, purchase_id) == [("purchase", 100)]
    with app.app_context():
        assert run_audit() == []


def test_a_callback_with_a_wrong_secret_is_not_found_and_kept_nowhere(app, client, daraja):
    assert send(client, {}, secret="wrong").status_code == 404
    assert kept(app, "mpesa") == []


def test_a_failure_on_our_side_is_a_503_retry_and_keeps_nothing(
    app, client, auth, stripe_on, daraja, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr("soma.providers.inbox.receive", broken)
    stripe = post_event(client, event("customer.created", {"id": "cus_1"}))
    assert stripe.status_code == 503
    assert stripe.get_json() == {"error": "an error on our side: send it again"}
    mpesa = send(client, callback("ws_CO_1", "1032"))
    assert mpesa.status_code == 503
    assert mpesa.get_json()["ResultDesc"] == "Not yet: an error on our side; send it again"
    assert kept(app, "stripe") == kept(app, "mpesa") == []


@pytest.mark.parametrize("body", ["not json", "[" * 100_000 + "]" * 100_000, '{"id": 1e99999}'])
def test_a_signed_body_that_is_not_json_is_kept_as_malformed(app, client, stripe_on, body):
    response = post_event(client, body)
    assert response.status_code == 400
    assert response.get_json()["status"] == "malformed"
    ((event_id, kind, status, note),) = kept(app, "stripe")
    assert (kind, status) == ("malformed", "ignored") and event_id.startswith("malformed:")
    assert note in ("malformed: not JSON", "malformed: no event id that fits "
                    "(printable, not too long) (claims id inf)")  # fmt: skip


def test_an_mpesa_body_nested_too_deep_is_malformed_not_a_failure(app, client, daraja):
    response = send(client, b"[" * 100_000 + b"]" * 100_000)
    assert response.status_code == 400
    ((_, _, status, note),) = kept(app, "mpesa")
    assert status == "ignored" and "stkCallback" in note


def test_an_event_soma_does_not_act_on_needs_no_object_id(app, client, stripe_on):
    balance = event("balance.available", {"object": "balance", "available": []})
    answer = post_event(client, balance)
    assert answer.status_code == 200 and answer.get_json()["status"] == "ignored"
    assert kept(app, "stripe") == [
        (balance["id"], "balance.available", "ignored", "balance.available: nothing to do")
    ]
