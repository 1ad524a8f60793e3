"""Buying tokens through the sandbox provider: the buy page, fulfilment once, bad input."""

import pytest
from sqlalchemy import func, select

from soma import clock
from soma.audit import audit, run_audit
from soma.extensions import db
from soma.models import JournalEntry, Notification, Purchase, PurchaseEvent, User
from soma.purchases import service
from tests.builders import make_user, paid_purchase
from tests.buying import buy, credits_of, package_id, point_credit_at
from tests.conftest import make_app
from tests.helpers import balances, csrf_from, text_of


@pytest.fixture
def student(app, auth):
    return auth.login_as("student", name="Pat Payer")


def sandbox(client, purchase_id: int, outcome: str):
    page = client.get(f"/buy/sandbox/{purchase_id}").get_data(as_text=True)
    return client.post(
        f"/buy/sandbox/{purchase_id}/{outcome}", data={"csrf_token": csrf_from(page)}
    )


def purchase_id_of(response) -> int:
    assert response.status_code == 303, response.get_data(as_text=True)
    return int(response.headers["Location"].rstrip("/").rsplit("/", 1)[1])


def test_the_buy_page_offers_the_packages_a_custom_amount_and_the_sandbox(client, student):
    text = text_of(client.get("/buy/").get_data(as_text=True))
    assert "You have 0 tokens available." in text
    for offer in ("50 tokens $5.00", "100 tokens $10.00", "250 tokens + 10 bonus $25.00",
                  "500 tokens + 50 bonus $50.00", "10 to 10,000 tokens at 10 ¢ each"):  # fmt: skip
        assert offer in text
    assert "Test payment (sandbox)" in text
    assert "KES" not in text  # no rate configured


def test_prices_show_in_kes_at_the_configured_rate(app, client, student):
    app.config["MPESA_KES_PER_USD"] = "129.50"
    text = text_of(client.get("/buy/").get_data(as_text=True))
    assert "100 tokens $10.00 · KES 1,295" in text
    assert "250 tokens + 10 bonus $25.00 · KES 3,238" in text  # 3237.5, rounded up


def test_a_package_bought_in_the_sandbox_is_credited_with_its_bonus_once(app, client, student):
    purchase_id = purchase_id_of(buy(client, package=package_id(app, 250)))
    page = text_of(client.get(f"/buy/sandbox/{purchase_id}").get_data(as_text=True))
    assert "Test payment. This is Soma's sandbox checkout: no card is charged" in page
    assert "250 tokens + 10 bonus for $25.00" in page

    paid = sandbox(client, purchase_id, "pay")
    assert paid.headers["Location"] == f"/buy/purchases/{purchase_id}"
    text = text_of(client.get(f"/buy/purchases/{purchase_id}").get_data(as_text=True))
    assert "260 tokens credited to your wallet." in text
    assert client.post(f"/buy/sandbox/{purchase_id}/pay").status_code in (303, 400)
    with app.app_context():
        service.fulfil(purchase_id, "retry")  # a provider's retry, later
        assert balances(student.id) == (260, 0)
        purchase = db.session.get(Purchase, purchase_id)
        assert (purchase.status, purchase.receipt) == ("paid", f"SANDBOX-{purchase_id}")
        assert (purchase.amount_minor, purchase.currency, purchase.provider) == (
            2500,
            "USD",
            "sandbox",
        )
        events = db.session.scalars(
            select(PurchaseEvent.to_status).where(PurchaseEvent.purchase_id == purchase_id)
        ).all()
        assert events == ["pending", "paid"]
        messages = db.session.scalars(
            select(Notification.message).where(Notification.user_id == student.id)
        ).all()
        assert messages == [f"260 tokens were added to your wallet (purchase #{purchase_id})."]
        assert run_audit() == []
    assert credits_of(app, purchase_id) == [("purchase", 250), ("bonus", 10)]

    history = text_of(client.get("/buy/purchases").get_data(as_text=True))
    assert (
        f"250 tokens + 10 bonus $25.00 — Test payment (sandbox) Paid Receipt SANDBOX-{purchase_id}"
        in history
    )


def test_a_custom_amount_costs_ten_cents_a_token(app, client, student):
    purchase_id = purchase_id_of(buy(client, custom="120"))
    sandbox(client, purchase_id, "pay")
    with app.app_context():
        purchase = db.session.get(Purchase, purchase_id)
        assert (purchase.tokens, purchase.bonus_tokens, purchase.amount_minor) == (120, 0, 1200)
        assert balances(student.id) == (120, 0)


def test_a_failed_payment_credits_nothing_until_the_provider_confirms_it(app, client, student):
    purchase_id = purchase_id_of(buy(client, package=package_id(app, 50)))
    sandbox(client, purchase_id, "fail")
    text = text_of(client.get(f"/buy/purchases/{purchase_id}").get_data(as_text=True))
    assert "The payment did not go through. The test payment was declined." in text
    assert credits_of(app, purchase_id) == []
    with app.app_context():
        assert balances(student.id) == (0, 0)
        # A provider that later says the money was taken after all is believed, once.
        service.fulfil(purchase_id, "late-confirmation")
        service.fulfil(purchase_id, "late-confirmation")
        service.fail(purchase_id, "stale-failure", "too late")  # a paid purchase stays paid
        assert db.session.get(Purchase, purchase_id).status == "paid"
        assert balances(student.id) == (50, 0)
    assert credits_of(app, purchase_id) == [("purchase", 50)]


def test_a_double_submitted_buy_form_makes_one_purchase(app, client, student):
    first = purchase_id_of(buy(client, package=package_id(app, 100), key="same"))
    again = purchase_id_of(buy(client, package=package_id(app, 100), key="same"))
    assert first == again
    other = buy(client, package=package_id(app, 250), key="same")  # same key, other content
    assert other.status_code == 409
    assert f"This form was already used for a different purchase (#{first})" in text_of(
        other.get_data(as_text=True)
    )
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Purchase)) == 1
        assert db.session.get(Purchase, first).tokens == 100


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ({"custom": "0"}, "Buy between 10 and 10,000 tokens at a time."),
        ({"custom": "9"}, "Buy between 10 and 10,000 tokens at a time."),
        ({"custom": "10001"}, "Buy between 10 and 10,000 tokens at a time."),
        ({"custom": "-5"}, "Enter a whole number of tokens, 1 or more."),
        ({"custom": "abc"}, "Enter a whole number of tokens, 1 or more."),
        ({"custom": "12.5"}, "Enter a whole number of tokens, 1 or more."),
        ({"custom": ""}, "Enter how many tokens to buy."),
        ({"package": "99999"}, "That package is not on sale. Choose another."),
        ({"package": "fifty"}, "That package is not on sale. Choose another."),
        (
            {"package": "PACKAGE", "provider": "paypal"},
            "Choose one of the payment methods offered.",
        ),
    ],
)
def test_bad_input_is_refused_clearly_and_changes_nothing(app, client, student, choice, message):
    if choice.get("package") == "PACKAGE":
        choice["package"] = str(package_id(app, 50))
    response = buy(client, **choice)
    assert response.status_code == 422
    assert message in text_of(response.get_data(as_text=True))
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Purchase)) == 0


def test_another_students_purchase_is_not_found(app, client, auth, student):
    purchase_id = purchase_id_of(buy(client, package=package_id(app, 50)))
    auth.logout()
    auth.login_as("student")
    for url in (f"/buy/purchases/{purchase_id}", f"/buy/purchases/{purchase_id}/status",
                f"/buy/sandbox/{purchase_id}"):  # fmt: skip
        assert client.get(url).status_code == 404
    assert sandbox(client, purchase_id, "pay").status_code == 404
    assert credits_of(app, purchase_id) == []


def test_teachers_do_not_buy_tokens(client, auth):
    auth.login_as("teacher")
    assert client.get("/buy/").status_code == 403


def test_the_sandbox_is_refused_in_production(app, tmp_path):
    production = make_app(
        app.config["SQLALCHEMY_DATABASE_URI"],
        SOMA_ENV="production",
        SECRET_KEY="x" * 32,
        RATELIMIT_STORAGE_URI="redis://127.0.0.1:6379/0",  # named, never reached here
    )
    with production.app_context():
        user = make_user("student")
        assert service.providers() == []
        with pytest.raises(service.PurchaseRefused, match="payment methods offered"):
            service.start(user, service.quote(custom_tokens=10), service.Provider.SANDBOX, "k")
        db.session.remove()


def test_the_status_fragment_polls_while_pending_and_says_when_it_settles(app, client, student):
    purchase_id = purchase_id_of(buy(client, package=package_id(app, 50)))
    pending = client.get(f"/buy/purchases/{purchase_id}/status?seen=pending")
    assert 'hx-trigger="every 2s"' in pending.get_data(as_text=True)
    assert "Processing your payment" in text_of(pending.get_data(as_text=True))
    with app.app_context():
        service.fulfil(purchase_id, "webhook")
    settled = client.get(f"/buy/purchases/{purchase_id}/status?seen=pending")
    assert "hx-trigger" not in settled.get_data(as_text=True)
    assert settled.headers["HX-Trigger"] == "purchase-settled"
    assert "50 tokens credited" in text_of(settled.get_data(as_text=True))


def test_the_audit_names_a_paid_purchase_that_was_never_credited(app, client, student):
    purchase_id = purchase_id_of(buy(client, package=package_id(app, 50)))
    with app.app_context():
        db.session.execute(
            Purchase.__table__.update().where(Purchase.id == purchase_id).values(status="paid")
        )
        db.session.commit()
        (violation,) = run_audit()
        assert str(violation).startswith(
            f"purchase-credit: purchase {purchase_id} is paid but was credited 0 time(s)"
        )
        assert db.session.get(User, student.id) is not None


def _entry_of(key: str) -> int:
    return db.session.scalar(select(JournalEntry.id).where(JournalEntry.idempotency_key == key))


@pytest.mark.parametrize("names", ["no entry", "its bonus", "another purchase's"])
def test_the_audit_names_a_paid_purchase_that_names_another_entry_as_its_credit(
    app, student, names
):
    """The operator's package sales count by `credited_entry_id`: a paid purchase names
    its tokens' entry, no other and not none; the audit sees every other state."""
    with app.app_context():
        user = db.session.get(User, student.id)
        paid = paid_purchase(user, package_tokens=250)
        other = paid_purchase(user, package_tokens=250)
        tokens_entry = _entry_of(f"purchase:{paid.id}:tokens")
        assert paid.credited_entry_id == tokens_entry
        assert run_audit() == []
        held = balances(student.id)
        wrong = {
            "no entry": None,
            "its bonus": _entry_of(f"purchase:{paid.id}:bonus"),
            "another purchase's": other.credited_entry_id,
        }[names]
        assert wrong != tokens_entry
        point_credit_at(paid.id, wrong)
        shown = "no entry" if wrong is None else f"entry {wrong}"
        assert [str(v) for v in run_audit()] == [
            f"purchase-credit: purchase {paid.id} is paid and was credited by entry "
            f"{tokens_entry}, but names {shown} as its credit"
        ]
        assert balances(student.id) == held  # the audit moved nothing


def test_the_audit_names_a_purchase_never_paid_that_names_a_credit(app, client, student):
    purchase_id = purchase_id_of(buy(client, package=package_id(app, 50)))
    with app.app_context():
        user = db.session.get(User, student.id)
        someone_elses = paid_purchase(user, package_tokens=250).credited_entry_id
        point_credit_at(purchase_id, someone_elses)
        assert [str(v) for v in run_audit()] == [
            f"purchase-credit: purchase {purchase_id} is pending, never credited, but names "
            f"entry {someone_elses} as its credit"
        ]


def test_an_incremental_audit_sees_a_credit_unnamed_since_its_checkpoint(app, student):
    """A purchase whose row changed since the checkpoint (its `updated_at`) is in an
    incremental run's scope."""
    with app.app_context():
        user = db.session.get(User, student.id)
        paid = paid_purchase(user, package_tokens=250)
        first = audit(full=True)
        assert first.violations == [] and first.checkpoint_id is not None
        point_credit_at(paid.id, None, updated_at=clock.now())
        later = audit(write_checkpoint=False)
        assert not later.full
        tokens_entry = _entry_of(f"purchase:{paid.id}:tokens")
        assert [str(v) for v in later.violations] == [
            f"purchase-credit: purchase {paid.id} is paid and was credited by entry "
            f"{tokens_entry}, but names no entry as its credit"
        ]
