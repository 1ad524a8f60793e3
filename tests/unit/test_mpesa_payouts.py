"""Withdrawals to M-Pesa through B2C, against the fake Daraja: the shillings fixed at request
(rounded down), one BusinessPayment keyed by the withdrawal, and each callback acted on
once: paid with its receipt, failed and released, a duplicate ignored, a time-out left
processing until the status query's answer (or a late result) closes it paid, once."""

import logging
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from soma import clock as app_clock
from soma.audit import run_audit
from soma.extensions import db
from soma.models import Alert, JournalEntry, ProviderEvent, User, Withdrawal
from soma.payouts import methods, rails
from soma.payouts import withdrawals as service
from tests.builders import fund
from tests.buying import mpesa_settings
from tests.fakes.daraja_server import (
    B2C_SHORTCODE,
    INITIATOR,
    INITIATOR_PASSWORD,
    FakeDaraja,
    b2c_result,
    b2c_timeout,
    make_certificate,
)
from tests.helpers import balances, csrf_from, hidden_fields, text_of

SECRET = "cb-secret-b2c"
BASE = "https://soma.example"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("safaricom"))


@pytest.fixture
def daraja(app, certificate):
    fake = FakeDaraja(b2c_key=certificate[1]).start()
    app.config.update(
        **mpesa_settings(fake.url, SECRET),
        MPESA_CALLBACK_BASE=BASE,
        MPESA_B2C_SHORTCODE=B2C_SHORTCODE,
        MPESA_B2C_INITIATOR_NAME=INITIATOR,
        MPESA_B2C_INITIATOR_PASSWORD=INITIATOR_PASSWORD,
        MPESA_B2C_CERT_PATH=str(certificate[0]),
    )
    yield fake
    fake.stop()


@pytest.fixture
def teacher(app, auth, clock, daraja):
    made = auth.login_as("teacher", name="Tara Teacher")
    with app.app_context():
        fund(made.id, 300)
        user = db.session.get(User, made.id)
        method = methods.add_mpesa(user, "0712 345 678", now=app_clock.now() - timedelta(days=2))
        made.method_id = method.id
    return made


def request(app, teacher, usd_cents: int = 1000):
    with app.app_context():
        user = db.session.get(User, teacher.id)
        made = service.request(user, teacher.method_id, usd_cents, f"test-{usd_cents}")
        db.session.expunge_all()
        return made


def entries_of(withdrawal_id: int) -> list[str]:
    return list(
        db.session.scalars(
            select(JournalEntry.kind)
            .where(
                JournalEntry.reference_type == "withdrawal",
                JournalEntry.reference_id == withdrawal_id,
            )
            .order_by(JournalEntry.id)
        )
    )


def callback(client, path: str, body):
    return client.post(f"/webhooks/mpesa/{SECRET}/b2c/{path}", json=body)


def show(client, withdrawal_id: int) -> str:
    return text_of(client.get(f"/withdrawals/{withdrawal_id}").get_data(as_text=True))


def test_the_confirmation_shows_the_shillings_rounded_down(app, client, teacher, daraja):
    page = client.get("/withdrawals/new").get_data(as_text=True)
    shown = client.post(
        "/withdrawals/review",
        data={"csrf_token": csrf_from(page), "amount": "10.01", "method": teacher.method_id},
    )
    assert shown.status_code == 200
    with app.app_context():
        user = db.session.get(User, teacher.id)
        quote, _, _ = service.preview(user, teacher.method_id, 1001)
    # floor(net * 129.50 / 100): never more shillings than the net is worth
    shillings = int(quote.net_cents * 12950 // 10000)
    assert shillings * 10000 <= quote.net_cents * 12950
    assert f"KES {shillings:,}" in text_of(shown.get_data(as_text=True))


def test_shillings_changed_since_the_confirmation_are_refused_and_nothing_is_sent(
    app, client, teacher, daraja
):
    page = client.get("/withdrawals/new").get_data(as_text=True)
    shown = client.post(
        "/withdrawals/review",
        data={"csrf_token": csrf_from(page), "amount": "10", "method": teacher.method_id},
    )
    fields = hidden_fields(shown.get_data(as_text=True))
    assert (fields["tokens"], fields["shillings"]) == ("250", str(950 * 12950 // 10000))
    app.config["MPESA_KES_PER_USD"] = "120.00"  # the shilling rate moved meanwhile

    refused = client.post("/withdrawals", data=fields)
    assert refused.status_code == 422
    assert service.RATE_CHANGED in text_of(refused.get_data(as_text=True))
    without_shillings = client.post("/withdrawals", data={**fields, "shillings": ""})
    assert service.RATE_CHANGED in text_of(without_shillings.get_data(as_text=True))
    with app.app_context():
        assert db.session.scalars(select(Withdrawal)).all() == []
        assert balances(teacher.id) == (300, 0)
    assert daraja.b2c_requests == []


def test_a_payout_is_one_b2c_payment_paid_once_by_its_result(app, client, teacher, daraja):
    with app.app_context():
        before = balances(teacher.id)
    made = request(app, teacher, 1000)
    (sent,) = daraja.b2c_requests
    key = f"soma-withdrawal-{made.id}"
    with app.app_context():
        withdrawal = service.fresh(made.id)
        assert withdrawal.status == "processing"
        assert (sent["OriginatorConversationID"], sent["Amount"], sent["PartyB"]) == (
            key, withdrawal.amount_kes, "254712345678",
        )  # fmt: skip
        assert withdrawal.amount_kes == withdrawal.net_cents * 12950 // 10000
        assert sent["ResultURL"] == f"{BASE}/webhooks/mpesa/{SECRET}/b2c/result"
        assert sent["QueueTimeOutURL"] == f"{BASE}/webhooks/mpesa/{SECRET}/b2c/timeout"
        assert withdrawal.provider_request_id == daraja.b2c[key]["conversation_id"]
        assert entries_of(made.id) == ["withdrawal_hold"]
    assert "Processing" in show(client, made.id)

    # A duplicate (15) says nothing of the first: ignored, still processing.
    duplicate = callback(client, "result", b2c_result(key, "15"))
    assert duplicate.get_json()["ResultCode"] == 0
    with app.app_context():
        assert service.fresh(made.id).status == "processing"

    result = daraja.result_of(key)
    assert callback(client, "result", result).get_json() == {
        "ResultCode": 0, "ResultDesc": "Accepted",
    }  # fmt: skip
    assert callback(client, "result", result).status_code == 200  # (a repeat: once)
    receipt = daraja.b2c[key]["receipt"]
    with app.app_context():
        withdrawal = service.fresh(made.id)
        assert (withdrawal.status, withdrawal.provider_reference) == ("paid", receipt)
        assert entries_of(made.id) == ["withdrawal_hold", "withdrawal_paid"]
        assert balances(teacher.id) == (before[0] - withdrawal.tokens, 0)
        assert run_audit() == []
        amount = withdrawal.amount_kes
    assert len(daraja.paid) == 1
    page = show(client, made.id)
    assert "Paid" in page and f"(KES {amount:,}) sent" in page and receipt in page


def test_a_failed_payment_releases_the_tokens(app, client, teacher, daraja):
    with app.app_context():
        before = balances(teacher.id)
    daraja.b2c_fails_with = "2040"
    made = request(app, teacher, 1000)
    key = f"soma-withdrawal-{made.id}"
    assert callback(client, "result", daraja.result_of(key)).status_code == 200
    with app.app_context():
        withdrawal = service.fresh(made.id)
        assert withdrawal.status == "failed"
        assert withdrawal.failure_reason == "The number is not registered for M-Pesa."
        assert entries_of(made.id) == ["withdrawal_hold", "withdrawal_release"]
        assert balances(teacher.id) == before
        assert run_audit() == []
    assert "The number is not registered for M-Pesa." in show(client, made.id)
    assert daraja.paid == []


def test_a_failure_on_our_side_is_failed_released_and_alerted(app, client, teacher, daraja, caplog):
    with app.app_context():
        before = balances(teacher.id)
    daraja.float_kes = 0
    made = request(app, teacher, 1000)
    with caplog.at_level(logging.ERROR):
        callback(client, "result", daraja.result_of(f"soma-withdrawal-{made.id}"))
    assert any("PAYOUT ALERT" in record.getMessage() for record in caplog.records)
    with app.app_context():
        withdrawal = service.fresh(made.id)
        assert withdrawal.status == "failed"
        assert "from our side" in withdrawal.failure_reason
        assert balances(teacher.id) == before
        assert run_audit() == []
        (alert,) = db.session.scalars(select(Alert)).all()
        assert (alert.rule, alert.cause) == (
            "payout-problem", f"payout-problem:{made.id}:mpesa-platform-side",
        )  # fmt: skip
        assert (alert.user_id, alert.object_type, alert.object_id) == (
            teacher.id, "withdrawal", made.id,
        )  # fmt: skip
        assert "check the float" in alert.message


def test_a_time_out_then_the_status_answer_then_a_late_result_pay_once(
    app, client, teacher, daraja, clock
):
    made = request(app, teacher, 1000)
    key = f"soma-withdrawal-{made.id}"
    assert callback(client, "timeout", b2c_timeout(key)).status_code == 200
    with app.app_context():
        assert service.fresh(made.id).status == "processing"  # unknown, not failed
        assert service.sweep() == 0 and daraja.status_queries == []  # (too soon to ask)
        clock.advance(minutes=6)
        assert service.sweep() == 0
        assert service.sweep() == 0  # (asked once: then at twice the wait, and so on)
        assert len(daraja.status_queries) == 1
        clock.advance(minutes=5)
        assert service.sweep() == 0
    query, again = daraja.status_queries
    assert again["OriginalConversationID"] == query["OriginalConversationID"]
    assert query["OriginalConversationID"] == key
    assert query["ResultURL"] == f"{BASE}/webhooks/mpesa/{SECRET}/b2c/status/result"
    assert callback(client, "status/result", daraja.status_result(query)).status_code == 200
    receipt = daraja.b2c[key]["receipt"]
    with app.app_context():
        withdrawal = service.fresh(made.id)
        assert (withdrawal.status, withdrawal.provider_reference) == ("paid", receipt)
    # The result, late: already paid, nothing more.
    assert callback(client, "result", daraja.result_of(key)).status_code == 200
    with app.app_context():
        assert entries_of(made.id) == ["withdrawal_hold", "withdrawal_paid"]
        assert run_audit() == []
    assert len(daraja.paid) == 1 and len(daraja.b2c_requests) == 1


def test_a_refusal_about_the_moment_is_sent_again_under_the_same_key(app, client, teacher, daraja):
    daraja.b2c_refusal = (429, {"errorCode": "429.001.01", "errorMessage": "Too many"})
    made = request(app, teacher, 1000)
    key = f"soma-withdrawal-{made.id}"
    with app.app_context():
        withdrawal = service.fresh(made.id)
        assert (withdrawal.status, withdrawal.send_state) == ("processing", "not_made")
    daraja.b2c_refusal = None
    with app.app_context():
        assert service.sweep() == 0
    assert [r["OriginatorConversationID"] for r in daraja.b2c_requests] == [key, key]
    callback(client, "result", daraja.result_of(key))
    with app.app_context():
        assert service.fresh(made.id).status == "paid"
        assert run_audit() == []
    assert len(daraja.paid) == 1


def test_a_refused_payment_fails_at_once(app, client, teacher, daraja):
    with app.app_context():
        before = balances(teacher.id)
    daraja.b2c_refusal = (400, {"errorCode": "400.002.02", "errorMessage": "Bad Request"})
    made = request(app, teacher, 1000)
    with app.app_context():
        assert service.fresh(made.id).status == "failed"
        assert balances(teacher.id) == before
        assert run_audit() == []
        (alert,) = db.session.scalars(select(Alert)).all()
        assert (alert.rule, alert.cause, alert.object_id) == (
            "payout-problem", f"payout-problem:{made.id}:mpesa-refused:1", made.id,
        )  # fmt: skip
        assert alert.message.startswith(f"M-Pesa refused withdrawal #{made.id}")


def test_b2c_callbacks_are_authenticated_by_the_secret_and_malformed_ones_kept(app, client, daraja):
    assert client.post("/webhooks/mpesa/wrong/b2c/result", json={}).status_code == 404
    assert client.post(f"/webhooks/mpesa/{SECRET}/b2c/other", json={}).status_code == 404
    answer = callback(client, "result", {"Result": {"ResultCode": "x y"}})
    assert answer.status_code == 400
    with app.app_context():
        (kept,) = db.session.scalars(select(ProviderEvent)).all()
        assert (kept.provider, kept.status, kept.kind) == ("mpesa-b2c", "ignored", "malformed")


def test_an_unknown_send_daraja_had_taken_is_asked_about_and_paid_once(
    app, client, teacher, daraja
):
    daraja.b2c_refusal = (503, {"errorCode": "503.001.01", "errorMessage": "Unavailable"})
    made = request(app, teacher, 1000)
    key = f"soma-withdrawal-{made.id}"
    with app.app_context():
        withdrawal = service.fresh(made.id)
        assert (withdrawal.status, withdrawal.send_state) == ("processing", "unknown")
        # As if that request had reached Daraja after all: it holds one under the key.
        daraja.b2c_refusal = None
        rails.MpesaRail()._pay(withdrawal)
        daraja.b2c_requests.clear()
        db.session.execute(
            update(Withdrawal)
            .where(Withdrawal.id == made.id)
            .values(provider_request_id=None, send_state="unknown")
        )
        db.session.commit()
        assert service.sweep() == 0  # sent again under the same key: a duplicate
        assert [r["OriginatorConversationID"] for r in daraja.b2c_requests] == [key]
        assert service.fresh(made.id).send_state == "taken"
    (query,) = daraja.status_queries  # asked at once
    assert callback(client, "status/result", daraja.status_result(query)).status_code == 200
    with app.app_context():
        assert service.fresh(made.id).status == "paid"
        assert entries_of(made.id) == ["withdrawal_hold", "withdrawal_paid"]
        assert run_audit() == []
    assert len(daraja.paid) == 1
