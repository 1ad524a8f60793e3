"""M-Pesa STK push through our Daraja client, against a fake Daraja server on 127.0.0.1."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from soma.admin import actions
from soma.audit import run_audit
from soma.extensions import db
from soma.models import AdminAction, ProviderEvent, Purchase, PurchaseEvent, UnmatchedPayment, User
from soma.providers import daraja
from soma.purchases import service
from tests.builders import make_user
from tests.buying import credits_of, mpesa_settings, package_id
from tests.fakes.daraja_server import FakeDaraja, callback
from tests.helpers import balances, confirm_post, csrf_from, text_of

CALLBACK_SECRET = "cb-" + "s3cret" * 5


@pytest.fixture
def fake_daraja(app):
    fake = FakeDaraja().start()
    app.config.update(mpesa_settings(fake.url, CALLBACK_SECRET))
    yield fake
    fake.stop()


@pytest.fixture
def student(app, auth, fake_daraja):
    return auth.login_as("student", name="Wanjiru Mpesa")


def pay_by_mpesa(app, client, tokens=100, phone="0712 345 678", key="m1"):
    page = client.get("/buy/").get_data(as_text=True)
    return client.post("/buy/", data={
        "csrf_token": csrf_from(page), "package": str(package_id(app, tokens)),
        "provider": "mpesa", "phone": phone, "key": key,
    })  # fmt: skip


def started(app, client, fake, tokens=100, key="m1") -> tuple[int, str]:
    response = pay_by_mpesa(app, client, tokens, key=key)
    assert response.status_code == 303, text_of(response.get_data(as_text=True))
    purchase_id = int(response.headers["Location"].rsplit("/", 1)[1])
    return purchase_id, fake.pushes[-1]["CheckoutRequestID"]


def send(client, body: dict, secret: str = CALLBACK_SECRET):
    return client.post(f"/webhooks/mpesa/{secret}/stk", json=body)


def purchase(app, purchase_id: int) -> Purchase:
    with app.app_context():
        found = db.session.get(Purchase, purchase_id)
        db.session.expunge(found)
        return found


@pytest.mark.parametrize(
    ("typed", "normalised"),
    [("0712345678", "254712345678"), ("0712 345 678", "254712345678"),
     ("+254 712-345-678", "254712345678"), ("254112345678", "254112345678"),
     ("712345678", "254712345678")],
)  # fmt: skip
def test_kenyan_phone_numbers_are_normalised(typed, normalised):
    assert daraja.normalise_phone(typed) == normalised


@pytest.mark.parametrize("typed", ["", "12345", "0812345678", "+1 415 555 0100", "07123456789"])
def test_other_numbers_are_refused(typed):
    with pytest.raises(daraja.InvalidPhone):
        daraja.normalise_phone(typed)


def test_an_stk_push_asks_the_phone_for_the_price_in_shillings(app, client, student, fake_daraja):
    assert "M-Pesa" in text_of(client.get("/buy/").get_data(as_text=True))
    purchase_id, checkout_id = started(app, client, fake_daraja)
    (push,) = fake_daraja.pushes
    assert push["Amount"] == 1295  # $10.00 at 129.50
    assert push["PartyA"] == push["PhoneNumber"] == "254712345678"
    assert push["BusinessShortCode"] == push["PartyB"] == "174379"
    assert push["TransactionType"] == "CustomerPayBillOnline"
    assert push["AccountReference"] == f"SOMA{purchase_id}"
    assert push["CallBackURL"] == f"http://localhost/webhooks/mpesa/{CALLBACK_SECRET}/stk"
    bought = purchase(app, purchase_id)
    assert (bought.currency, bought.amount_minor, bought.checkout_request_id) == (
        "KES",
        1295,
        checkout_id,
    )
    page = text_of(client.get(f"/buy/purchases/{purchase_id}").get_data(as_text=True))
    assert "Check your phone. Enter your M-Pesa PIN to pay KES 1,295." in page


def test_a_paid_callback_is_confirmed_then_credited_once(app, client, student, fake_daraja):
    purchase_id, checkout_id = started(app, client, fake_daraja)
    fake_daraja.finish(checkout_id, "0")
    body = callback(checkout_id, "0", amount=1295, receipt="NLJ7RT61SV")
    answers = [send(client, body) for _ in range(3)]  # Safaricom retries
    assert [a.get_json() for a in answers] == [{"ResultCode": 0, "ResultDesc": "Accepted"}] * 3
    assert fake_daraja.queries == [checkout_id]  # confirmed once, then known
    bought = purchase(app, purchase_id)
    assert (bought.status, bought.receipt) == ("paid", "NLJ7RT61SV")
    assert credits_of(app, purchase_id) == [("purchase", 100)]
    with app.app_context():
        assert balances(student.id) == (100, 0)
        assert run_audit() == []
    history = text_of(client.get("/buy/purchases").get_data(as_text=True))
    assert "100 tokens KES 1,295 — M-Pesa Paid Receipt NLJ7RT61SV" in history


@pytest.mark.parametrize(
    ("code", "message"),
    [("1032", "You cancelled the M-Pesa request on your phone."),
     ("1037", "M-Pesa could not reach your phone in time."),
     ("1", "Your M-Pesa balance is too low for this payment.")],
)  # fmt: skip
def test_a_cancelled_timed_out_or_unfunded_request_says_so_plainly(
    app, client, student, fake_daraja, code, message
):
    purchase_id, checkout_id = started(app, client, fake_daraja)
    assert send(client, callback(checkout_id, code)).status_code == 200
    bought = purchase(app, purchase_id)
    assert bought.status == "failed"
    page = text_of(client.get(f"/buy/purchases/{purchase_id}").get_data(as_text=True))
    assert f"The payment did not go through. {message}" in page
    assert credits_of(app, purchase_id) == []


def test_a_callback_the_status_query_does_not_confirm_credits_nothing(
    app, client, student, fake_daraja
):
    purchase_id, checkout_id = started(app, client, fake_daraja)
    fake_daraja.finish(checkout_id, "1032")  # Daraja itself says it was cancelled
    send(client, callback(checkout_id, "0", amount=1295))
    assert purchase(app, purchase_id).status == "pending"
    assert credits_of(app, purchase_id) == []


def test_a_receipt_credits_one_purchase_only(app, client, student, fake_daraja):
    first_id, first = started(app, client, fake_daraja, key="a")
    second_id, second = started(app, client, fake_daraja, key="b")
    for checkout_id in (first, second):
        fake_daraja.finish(checkout_id, "0")
    send(client, callback(first, "0", amount=1295, receipt="NLJSAME001"))
    send(client, callback(second, "0", amount=1295, receipt="NLJSAME001"))  # replayed receipt
    assert purchase(app, first_id).status == "paid"
    assert purchase(app, second_id).status == "pending"
    assert credits_of(app, second_id) == []


def test_a_wrong_secret_is_not_found_and_moves_nothing(app, client, student, fake_daraja):
    purchase_id, checkout_id = started(app, client, fake_daraja)
    fake_daraja.finish(checkout_id, "0")
    assert send(client, callback(checkout_id, "0", amount=1295), secret="guess").status_code == 404
    assert purchase(app, purchase_id).status == "pending"


def test_an_invalid_phone_is_refused_and_nothing_is_pushed(app, client, student, fake_daraja):
    response = pay_by_mpesa(app, client, phone="0812 000 000")
    assert response.status_code == 422
    assert "Enter a Kenyan M-Pesa number" in text_of(response.get_data(as_text=True))
    assert fake_daraja.pushes == []
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Purchase)) == 0


def test_the_token_is_fetched_once_and_reused(app, client, student, fake_daraja):
    started(app, client, fake_daraja, key="a")
    started(app, client, fake_daraja, key="b")
    assert len(fake_daraja.pushes) == 2
    assert fake_daraja.token_requests == 1


def test_a_lost_callback_is_caught_by_the_status_page(
    app, client, student, fake_daraja, monkeypatch
):
    purchase_id, checkout_id = started(app, client, fake_daraja)
    monkeypatch.setattr("soma.purchases.mpesa.RECHECK_AFTER", 0.0)
    fake_daraja.finish(checkout_id, "0")
    fragment = client.get(f"/buy/purchases/{purchase_id}/status?seen=pending")
    assert "100 tokens credited" in text_of(fragment.get_data(as_text=True))
    assert credits_of(app, purchase_id) == [("purchase", 100)]
    # The callback, late, changes nothing more (and fills in the receipt).
    send(client, callback(checkout_id, "0", amount=1295, receipt="NLJLATE001"))
    assert credits_of(app, purchase_id) == [("purchase", 100)]
    assert purchase(app, purchase_id).receipt == "NLJLATE001"


def test_a_paid_callback_daraja_cannot_confirm_yet_is_settled_later_by_the_sweeper(
    app, client, student, fake_daraja, runner, monkeypatch
):
    purchase_id, checkout_id = started(app, client, fake_daraja)
    fake_daraja.finish(checkout_id, "0")
    fake_daraja.query_error = (
        429,
        {"errorCode": "429.001.01", "errorMessage": "Too many requests"},
    )
    body = callback(checkout_id, "0", amount=1295, receipt="NLJRATE001")
    assert send(client, body).status_code == 503  # send it again: recorded as to be retried
    assert purchase(app, purchase_id).status == "pending"  # not confirmed, not given up
    with app.app_context():
        (kept,) = db.session.scalars(select(ProviderEvent)).all()
        assert (kept.status, kept.attempts) == ("retry", 1)
        assert "NLJRATE001" in kept.body
    fake_daraja.query_error = None
    monkeypatch.setattr("soma.purchases.mpesa.RECHECK_AFTER", 0.0)
    result = runner.invoke(args=["soma", "sweep"])  # nobody has the status page open
    assert result.exit_code == 0, result.output
    assert purchase(app, purchase_id).status == "paid"
    send(client, body)  # the callback again: fills in the receipt, credits nothing more
    assert purchase(app, purchase_id).receipt == "NLJRATE001"
    assert credits_of(app, purchase_id) == [("purchase", 100)]


def test_a_still_processing_answer_does_not_fail_the_purchase(
    app, client, student, fake_daraja, monkeypatch
):
    purchase_id, checkout_id = started(app, client, fake_daraja)
    monkeypatch.setattr("soma.purchases.mpesa.RECHECK_AFTER", 0.0)
    fake_daraja.finish(checkout_id, "4999", "The transaction is still under processing")
    client.get(f"/buy/purchases/{purchase_id}/status?seen=pending")
    assert purchase(app, purchase_id).status == "pending"


def test_a_purchase_is_pushed_to_the_phone_once(app, client, student, fake_daraja):
    purchase_id, _ = started(app, client, fake_daraja)
    with app.test_request_context():
        from soma.purchases import mpesa

        assert mpesa.start_stk(db.session.get(Purchase, purchase_id)) is False
    again = pay_by_mpesa(app, client)  # the same form, submitted again
    assert again.status_code == 303
    assert len(fake_daraja.pushes) == 1


def test_a_strange_secret_or_foreign_digits_are_refused(app, client, student, fake_daraja):
    assert send(client, {"Body": {}}, secret="sécret").status_code == 404
    with pytest.raises(daraja.InvalidPhone):
        daraja.normalise_phone("07" + "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668")


# A push whose answer never came, and payments we cannot match ----------------------------


def test_a_push_whose_answer_never_came_stays_pending_and_its_payment_is_kept_then_credited(
    app, client, student, fake_daraja, runner, monkeypatch
):
    monkeypatch.setattr("soma.providers.daraja.TIMEOUT", 0.3)
    fake_daraja.push_hangs = 0.8  # Daraja takes the push, but its answer comes too late
    response = pay_by_mpesa(app, client)
    assert response.status_code == 303  # to the status page: it may still reach the phone
    purchase_id = int(response.headers["Location"].rsplit("/", 1)[1])
    pending = purchase(app, purchase_id)
    assert (pending.status, pending.checkout_request_id) == ("pending", None)
    assert pending.push_started_at is not None
    (push,) = fake_daraja.pushes
    checkout_id = push["CheckoutRequestID"]

    fake_daraja.finish(checkout_id, "0")  # the student paid on their phone anyway
    body = callback(checkout_id, "0", amount=1295, receipt="NLJLOST001")
    assert send(client, body).status_code == 200
    assert send(client, body).status_code == 200  # again: kept once
    with app.app_context():
        (kept,) = db.session.scalars(select(UnmatchedPayment)).all()
        assert (kept.receipt, kept.phone, kept.amount_minor, kept.purchase_id) == (
            "NLJLOST001",
            "254712345678",
            1295,
            None,
        )
        assert balances(student.id) == (0, 0)

    result = runner.invoke(args=["soma", "reconcile-mpesa"])
    assert result.exit_code == 0, result.output
    assert f"NLJLOST001  KES 1,295  254712345678 → purchase #{purchase_id}" in result.output
    paid = purchase(app, purchase_id)
    assert (paid.status, paid.receipt, paid.checkout_request_id) == (
        "paid",
        "NLJLOST001",
        checkout_id,
    )
    with app.app_context():
        assert balances(student.id) == (100, 0)
        assert db.session.get(UnmatchedPayment, kept.id).purchase_id == purchase_id
        assert run_audit() == []
    again = runner.invoke(args=["soma", "reconcile-mpesa"])
    assert "No unmatched M-Pesa payments." in again.output
    assert credits_of(app, purchase_id) == [("purchase", 100)]


def test_an_admin_matches_a_payment_two_purchases_fit_once_and_only_once(
    app, client, auth, fake_daraja, runner
):
    with app.app_context():
        buyer = make_user("student")
        quote = service.quote(package_id=package_id(app, 100))
        first = service.start(buyer, quote, service.Provider.MPESA, "k1", phone="254712345678")
        second = service.start(buyer, quote, service.Provider.MPESA, "k2", phone="254712345678")
        first_id, second_id, buyer_id = first.id, second.id, buyer.id
        db.session.execute(  # both pushed; neither answer came back
            update(Purchase)
            .where(Purchase.id.in_([first_id, second_id]))
            .values(push_started_at=clock_now())
        )
        db.session.commit()
    fake_daraja.finish("ws_CO_lost", "0")
    body = callback("ws_CO_lost", "0", amount=1295, receipt="NLJTWO0001")
    assert send(client, body).status_code == 200
    result = runner.invoke(args=["soma", "reconcile-mpesa"])
    assert "2 purchases fit; match by hand" in result.output
    assert purchase(app, first_id).status == "pending"

    admin = auth.login_as("admin")
    page = client.get("/admin/payments/unmatched").get_data(as_text=True)
    assert "NLJTWO0001" in text_of(page) and f"#{first_id}" in text_of(page)
    with app.app_context():
        payment_id = db.session.scalar(select(UnmatchedPayment.id))
    url = f"/admin/payments/unmatched/{payment_id}/match"
    response = confirm_post(client, url, {"csrf_token": csrf_from(page), "purchase_id": second_id})
    assert response.status_code == 303
    assert purchase(app, second_id).status == "paid"
    again = confirm_post(
        client, url, {"csrf_token": csrf_from(page), "purchase_id": first_id}, follow_redirects=True
    )
    assert "is already matched" in text_of(again.get_data(as_text=True))
    assert purchase(app, first_id).status == "pending"
    with app.app_context():
        assert balances(buyer_id) == (100, 0)
        assert run_audit() == []
        # One record, written with the match; the refused second match left none.
        (record,) = db.session.scalars(select(AdminAction)).all()
        assert (record.admin_id, record.action, record.object_type, record.object_id) == (
            admin.id,
            "match_payment",
            "unmatched_payment",
            payment_id,
        )
        assert actions.values(record.before) == {"purchase_id": None, "purchase_status": "pending"}
        assert actions.values(record.after) == {"purchase_id": second_id, "purchase_status": "paid"}


def test_a_payment_that_fits_no_purchase_is_kept_and_listed_not_credited(
    app, client, fake_daraja, runner
):
    body = callback("ws_CO_stranger", "0", amount=777, receipt="NLJSTRANGE")
    assert send(client, body).status_code == 200
    result = runner.invoke(args=["soma", "reconcile-mpesa"])
    assert "NLJSTRANGE  KES 777  254712345678: no purchase fits" in result.output
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(UnmatchedPayment)) == 1


def test_unpushed_purchases_expire_and_never_starve_the_recheck(
    app, client, student, fake_daraja, runner, monkeypatch
):
    purchase_id, checkout_id = started(app, client, fake_daraja)
    with app.app_context():
        buyer = db.session.get(User, student.id)
        quote = service.quote(package_id=package_id(app, 100))
        unpushed = [
            service.start(buyer, quote, service.Provider.MPESA, f"u{i}", phone="254712345678").id
            for i in range(105)
        ]
        old = clock_now() - timedelta(minutes=16)
        db.session.execute(update(Purchase).where(Purchase.id.in_(unpushed)).values(created_at=old))
        db.session.commit()
    fake_daraja.finish(checkout_id, "0")  # its callback is lost; the sweeper must ask
    monkeypatch.setattr("soma.purchases.mpesa.RECHECK_AFTER", 0.0)
    result = runner.invoke(args=["soma", "sweep"])
    assert result.exit_code == 0, result.output
    assert purchase(app, purchase_id).status == "paid"
    with app.app_context():
        statuses = db.session.scalars(
            select(Purchase.status).where(Purchase.id.in_(unpushed)).distinct()
        ).all()
        assert statuses == ["expired"]
        note = db.session.scalars(
            select(PurchaseEvent.note).where(PurchaseEvent.purchase_id == unpushed[0])
        ).all()
        assert "The M-Pesa request was never sent." in note


def clock_now():
    from soma import clock

    return clock.now()


def test_a_payment_of_the_wrong_amount_is_kept_never_credited_and_never_jams_reconcile(
    app, client, student, fake_daraja, runner, monkeypatch
):
    purchase_id, checkout_id = started(app, client, fake_daraja)
    fake_daraja.finish(checkout_id, "0")
    body = callback(checkout_id, "0", amount=1000, receipt="NLJSHORT01")  # not KES 1,295
    assert send(client, body).status_code == 200
    failed = purchase(app, purchase_id)
    assert failed.status == "failed" and "not the price" in failed.failure_reason
    monkeypatch.setattr("soma.purchases.mpesa.RECHECK_AFTER", 0.0)
    assert runner.invoke(args=["soma", "sweep"]).exit_code == 0  # asks nothing of a failed one
    assert purchase(app, purchase_id).status == "failed"
    result = runner.invoke(args=["soma", "reconcile-mpesa"])
    assert result.exit_code == 0, result.output
    assert f"answers purchase #{purchase_id}'s request; match by hand" in result.output
    with app.app_context():
        (kept,) = db.session.scalars(select(UnmatchedPayment)).all()
        assert (kept.receipt, kept.amount_minor, kept.purchase_id) == ("NLJSHORT01", 1000, None)
        assert balances(student.id) == (0, 0)
