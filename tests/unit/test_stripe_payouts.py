"""Withdrawals through Stripe Connect, against the fake Stripe: the teacher connects an
Express account (readiness only from the Connect webhook), a withdrawal becomes a
Transfer keyed by the withdrawal, and each answer Stripe may give ends the right way:
paid, failed and released, or processing until the sweeper knows (a short platform
balance, a lost answer); a reversed transfer gives the tokens back, once."""

import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from soma import clock as app_clock
from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.models import (
    Alert,
    JournalEntry,
    Notification,
    PayoutMethod,
    PlatformAccount,
    ProviderEvent,
    User,
    Wallet,
    Withdrawal,
)
from soma.payouts import methods
from soma.payouts import withdrawals as service
from soma.providers import stripe_connect
from tests.builders import fund
from tests.conftest import STRIPE_WEBHOOK_SECRET
from tests.fakes.stripe_server import event, failed_payout, signed
from tests.helpers import balances, csrf_from, text_of

CONNECT_SECRET = "whsec_connect_test_soma"


@pytest.fixture
def connect(app, stripe_on):
    app.config["STRIPE_CONNECT_WEBHOOK_SECRET"] = CONNECT_SECRET
    return stripe_on


@pytest.fixture
def teacher(app, auth, clock, connect):
    made = auth.login_as("teacher", name="Tara Teacher")
    with app.app_context():
        fund(made.id, 300)
    return made


def platform(code: PlatformAccount) -> int:
    total = select(func.sum(Wallet.available)).where(Wallet.code == code.value)
    return db.session.scalar(total) or 0


def entries_of(withdrawal_id: int) -> list[tuple[str, int]]:
    return [
        tuple(row)
        for row in db.session.execute(
            select(JournalEntry.kind, JournalEntry.tokens)
            .where(
                JournalEntry.reference_type == "withdrawal",
                JournalEntry.reference_id == withdrawal_id,
            )
            .order_by(JournalEntry.id)
        )
    ]


def post_connect(client, payload: dict, secret: str = CONNECT_SECRET):
    body, header = signed(payload, secret)
    return client.post(
        "/webhooks/stripe/connect", data=body, headers={"Stripe-Signature": header},
        content_type="application/json",
    )  # fmt: skip


def post_platform(client, payload: dict):
    body, header = signed(payload, STRIPE_WEBHOOK_SECRET)
    return client.post(
        "/webhooks/stripe", data=body, headers={"Stripe-Signature": header},
        content_type="application/json",
    )  # fmt: skip


def account_updated(fake, account_id: str, created: int | None = None, **changes) -> dict:
    payload = event("account.updated", fake.update_account(account_id, **changes),
                    account=account_id)  # fmt: skip
    if created is not None:
        payload["created"] = created
    return payload


def ready(client, fake, account_id: str):
    """Onboarding done, as Stripe says it: transfers active, payouts on, nothing due."""
    answer = post_connect(
        client,
        account_updated(
            fake,
            account_id,
            transfers="active",
            payouts_enabled=True,
            currently_due=[],
            past_due=[],
            disabled_reason=None,
        ),
    )
    assert answer.status_code == 200, answer.get_json()


def methods_page(client) -> str:
    return text_of(client.get("/payout-methods").get_data(as_text=True))


def connected_method(app, client, fake, teacher, days_old: int = 2) -> int:
    """The teacher's Stripe method, connected `days_old` days ago and ready."""
    with app.app_context():
        user = db.session.get(User, teacher.id)
        methods.connect_stripe(
            user, "https://soma.example/r", "https://soma.example/b",
            now=app_clock.now() - timedelta(days=days_old), country="US",
        )  # fmt: skip
        method = methods.stripe_method(user)
        method_id, account_id = method.id, method.stripe_account_id
    ready(client, fake, account_id)
    return method_id


def request(app, teacher, method_id: int, usd_cents: int = 1000) -> Withdrawal:
    with app.app_context():
        user = db.session.get(User, teacher.id)
        made = service.request(user, method_id, usd_cents, f"test:{method_id}:{usd_cents}")
        db.session.expunge_all()
        return made


def alerts_of(withdrawal_id: int) -> list[tuple[str, str]]:
    """The alerts raised about a withdrawal: (rule, cause), oldest first."""
    return [
        tuple(row)
        for row in db.session.execute(
            select(Alert.rule, Alert.cause)
            .where(Alert.object_type == "withdrawal", Alert.object_id == withdrawal_id)
            .order_by(Alert.id)
        )
    ]


def show(client, withdrawal_id: int) -> str:
    return text_of(client.get(f"/withdrawals/{withdrawal_id}").get_data(as_text=True))


# Connecting the account ------------------------------------------------------------------


def test_connecting_makes_one_express_account_and_readiness_comes_only_from_stripe(
    app, client, teacher, connect
):
    page = client.get("/payout-methods").get_data(as_text=True)
    assert "Stripe" in text_of(page)
    for country, why in (("", "Choose the country"), ("KE", "in Kenya, add M-Pesa")):
        refused = client.post(
            "/payout-methods",
            data={"csrf_token": csrf_from(page), "kind": "stripe", "country": country},
        )
        assert refused.status_code == 422
        assert why in text_of(refused.get_data(as_text=True))
        assert connect.accounts == {}
    sent = client.post(
        "/payout-methods", data={"csrf_token": csrf_from(page), "kind": "stripe", "country": "GB"}
    )
    assert sent.status_code == 303
    (account_id,) = list(connect.accounts)
    assert connect.accounts[account_id]["country"] == "GB"
    assert sent.headers["Location"] == connect.account_links[-1]["url"]
    link = connect.account_links[-1]
    assert link["refresh_url"].endswith("/payout-methods/stripe/refresh")
    assert link["return_url"].endswith("/payout-methods/stripe/return")
    with app.app_context():
        (method,) = db.session.scalars(select(PayoutMethod)).all()
        assert (method.kind, method.stripe_account_id) == ("stripe", account_id)
        assert not method.transfers_active
        method_id = method.id
    made = [r for r in connect.requests if r["path"] == "/v1/accounts"]
    assert [r["idempotency_key"] for r in made] == [f"soma-payout-method:{method_id}:account"]

    # Back from Stripe: that proves nothing. Continuing makes no second account.
    back = client.get("/payout-methods/stripe/return", follow_redirects=True)
    assert "Cannot receive transfers yet" in text_of(back.get_data(as_text=True))
    again = client.post(
        "/payout-methods/stripe/onboarding",
        data={"csrf_token": csrf_from(client.get("/payout-methods").get_data(as_text=True))},
    )
    assert again.status_code == 303 and list(connect.accounts) == [account_id]
    assert client.get("/payout-methods/stripe/refresh").status_code == 303
    assert len(connect.account_links) == 3

    # A withdrawal to it is refused until Stripe says transfers are active.
    with app.app_context(), pytest.raises(service.WithdrawalRefused, match="onboarding"):
        service.preview(db.session.get(User, teacher.id), method_id, 1000)
    assert "Cannot receive transfers yet" in methods_page(client)
    due = account_updated(connect, account_id, created=int(time.time()) - 120)
    assert post_connect(client, due).get_json()["status"] == "handled"
    shown = methods_page(client)
    assert "Stripe still needs: Legal name; Date of birth; Business type" in shown or (
        "Stripe still needs:" in shown and "A bank account for payouts" in shown
    )
    assert "Continue with Stripe" in shown

    # The platform endpoint's secret does not sign Connect events.
    update = account_updated(connect, account_id, transfers="active", payouts_enabled=True,
                             currently_due=[], past_due=[], disabled_reason=None)  # fmt: skip
    assert post_connect(client, update, STRIPE_WEBHOOK_SECRET).status_code == 400
    assert post_connect(client, update).get_json()["status"] == "handled"
    assert post_connect(client, update).get_json()["duplicate"] is True
    shown = methods_page(client)
    assert "Ready: receives transfers and pays out to your bank" in shown
    assert "Stripe still needs" not in shown

    # An older event arriving late does not undo it.
    stale = account_updated(connect, account_id, created=update["created"] - 60,
                            transfers="inactive", currently_due=["external_account"])  # fmt: skip
    assert post_connect(client, stale).get_json()["status"] == "ignored"
    assert "Ready: receives transfers" in methods_page(client)
    with app.app_context():
        service.preview(db.session.get(User, teacher.id), method_id, 1000)  # (now allowed)


def test_a_malformed_connect_event_is_kept_as_ignored_and_answered_400(app, client, connect):
    body, header = signed({"id": "evt_1", "type": "account.updated", "created": 1,
                           "livemode": False, "data": {"object": {}}}, CONNECT_SECRET)  # fmt: skip
    answer = client.post("/webhooks/stripe/connect", data=body,
                         headers={"Stripe-Signature": header})  # fmt: skip
    assert answer.status_code == 400
    with app.app_context():
        (kept,) = db.session.scalars(select(ProviderEvent)).all()
        assert (kept.provider, kept.status, kept.kind) == ("stripe-connect", "ignored", "malformed")
    assert client.post("/webhooks/stripe/connect", data=b"{}").status_code == 400


def test_a_failed_payout_to_the_bank_is_shown_and_moves_no_tokens(app, client, teacher, connect):
    method_id = connected_method(app, client, connect, teacher)
    with app.app_context():
        account_id = db.session.get(PayoutMethod, method_id).stripe_account_id
        before = balances(teacher.id)
    failure = event("payout.failed", failed_payout(2500), account=account_id)
    assert post_connect(client, failure).get_json()["status"] == "handled"
    shown = methods_page(client)
    assert "Stripe could not pay $25.00 out to your bank" in shown
    assert "The bank account has been closed." in shown
    with app.app_context():
        assert balances(teacher.id) == before
        assert (
            db.session.scalars(
                select(Notification.kind).where(Notification.user_id == teacher.id)
            ).all()[-1]
            == "stripe_payout_failed"
        )
        assert run_audit() == []


# Paying a withdrawal ---------------------------------------------------------------------


def test_a_withdrawal_is_one_transfer_keyed_by_it_and_paid_once(app, client, teacher, connect):
    method_id = connected_method(app, client, connect, teacher)
    with app.app_context():
        before_available = balances(teacher.id)[0]
    made = request(app, teacher, method_id, 1000)
    (transfer,) = connect.made_transfers
    with app.app_context():
        withdrawal = service.fresh(made.id)
        assert withdrawal.status == "paid"
        assert withdrawal.provider_reference == transfer["id"]
        assert withdrawal.provider_request_id == transfer["id"]
        assert transfer["amount"] == withdrawal.net_cents
        assert transfer["transfer_group"] == f"withdrawal:{made.id}"
        assert transfer["metadata"] == {"withdrawal_id": str(made.id)}
        assert balances(teacher.id) == (before_available - withdrawal.tokens, 0)
        assert entries_of(made.id) == [("withdrawal_hold", withdrawal.tokens),
                                       ("withdrawal_paid", withdrawal.tokens)]  # fmt: skip
        assert run_audit() == []
        sent = [r for r in connect.requests if r["path"] == "/v1/transfers"]
        assert [r["idempotency_key"] for r in sent] == [f"withdrawal:{made.id}"]
        # The sweeper and a repeat of the request change nothing.
        service.sweep()
    assert len(connect.made_transfers) == 1
    assert "Paid" in show(client, made.id)


def test_a_transfer_stripe_refuses_fails_the_withdrawal_and_gives_the_tokens_back(
    app, client, teacher, connect
):
    method_id = connected_method(app, client, connect, teacher)
    with app.app_context():
        account_id = db.session.get(PayoutMethod, method_id).stripe_account_id
        before = balances(teacher.id)
    connect.update_account(account_id, transfers="inactive")  # (restricted; no event yet)
    made = request(app, teacher, method_id, 1000)
    assert connect.made_transfers == []
    with app.app_context():
        withdrawal = service.fresh(made.id)
        assert withdrawal.status == "failed"
        assert "Stripe refused the transfer" in withdrawal.failure_reason
        assert balances(teacher.id) == before
        assert entries_of(made.id) == [("withdrawal_hold", withdrawal.tokens),
                                       ("withdrawal_release", withdrawal.tokens)]  # fmt: skip
        assert run_audit() == []
    assert "Failed" in show(client, made.id)


def test_a_short_platform_balance_waits_and_each_retry_has_the_next_key_until_topped_up(
    app, client, teacher, connect, clock
):
    method_id = connected_method(app, client, connect, teacher)
    connect.platform_available = 0
    made = request(app, teacher, method_id, 1000)
    with app.app_context():
        withdrawal = service.fresh(made.id)
        assert (withdrawal.status, withdrawal.send_state, withdrawal.attempt) == (
            "processing", "balance", 1,
        )  # fmt: skip
        assert entries_of(made.id) == [("withdrawal_hold", withdrawal.tokens)]
        assert service.sweep() == 0
        assert service.fresh(made.id).attempt == 1  # (not tried again on every pass)
        clock.advance(minutes=5)
        assert service.sweep() == 0
        assert service.sweep() == 0
        assert service.fresh(made.id).attempt == 2
        assert run_audit() == []
        # An alert for the admin per attempt, however many passes retried it.
        assert alerts_of(made.id) == [
            ("payout-problem", f"payout-problem:{made.id}:stripe-balance:1"),
            ("payout-problem", f"payout-problem:{made.id}:stripe-balance:2"),
        ]
        assert "cannot cover withdrawal" in db.session.scalars(select(Alert.message)).first()
    assert "Processing" in show(client, made.id)
    connect.platform_available = 10_000_000  # topped up
    with app.app_context():
        clock.advance(minutes=5)
        assert service.sweep() == 1
        withdrawal = service.fresh(made.id)
        assert (withdrawal.status, withdrawal.attempt) == ("paid", 3)
        assert entries_of(made.id) == [("withdrawal_hold", withdrawal.tokens),
                                       ("withdrawal_paid", withdrawal.tokens)]  # fmt: skip
        assert run_audit() == []
    sent = [r["idempotency_key"] for r in connect.requests if r["path"] == "/v1/transfers"]
    assert sent == [f"withdrawal:{made.id}", f"withdrawal:{made.id}:attempt-2",
                    f"withdrawal:{made.id}:attempt-3"]  # fmt: skip
    assert len(connect.made_transfers) == 1


def test_a_lost_transfer_answer_is_found_by_its_group_and_paid_once(app, client, teacher, connect):
    method_id = connected_method(app, client, connect, teacher)
    connect.lose_transfer_answers = 1
    made = request(app, teacher, method_id, 1000)
    (transfer,) = connect.made_transfers
    with app.app_context():
        withdrawal = service.fresh(made.id)
        assert (withdrawal.status, withdrawal.send_state) == ("processing", "unknown")
        assert withdrawal.provider_request_id is None
        assert service.sweep() == 1
        withdrawal = service.fresh(made.id)
        assert (withdrawal.status, withdrawal.provider_reference) == ("paid", transfer["id"])
        assert service.sweep() == 0
        assert entries_of(made.id) == [("withdrawal_hold", withdrawal.tokens),
                                       ("withdrawal_paid", withdrawal.tokens)]  # fmt: skip
        assert run_audit() == []
    assert len(connect.made_transfers) == 1
    sent = [r["idempotency_key"] for r in connect.requests if r["path"] == "/v1/transfers"]
    assert sent == [f"withdrawal:{made.id}"]  # (found by its group: not sent again)


def test_a_reversed_transfer_gives_the_tokens_and_fee_back_once(app, client, teacher, connect):
    method_id = connected_method(app, client, connect, teacher)
    with app.app_context():
        before = balances(teacher.id)
        redemption, fees = platform(PlatformAccount.REDEMPTION), platform(PlatformAccount.FEES)
    made = request(app, teacher, method_id, 1000)
    (transfer,) = connect.made_transfers
    with app.app_context():
        withdrawal = service.fresh(made.id)
        assert platform(PlatformAccount.FEES) == fees + withdrawal.fee_tokens

    partly = event("transfer.reversed", connect.reverse_transfer(transfer["id"], 100))
    assert post_platform(client, partly).get_json()["status"] == "ignored"  # (for an admin)
    with app.app_context():
        assert service.fresh(made.id).reversed_at is None
        assert alerts_of(made.id) == [
            (
                "payout-problem",
                f"payout-problem:{made.id}:stripe-partial-reversal:{transfer['id']}:100",
            )
        ]

    whole = event("transfer.reversed", connect.reverse_transfer(transfer["id"]))
    assert post_platform(client, whole).get_json()["status"] == "handled"
    assert post_platform(client, whole).get_json()["duplicate"] is True
    again = event("transfer.reversed", connect.transfers[transfer["id"]])  # (another event id)
    assert post_platform(client, again).get_json()["status"] == "handled"
    with app.app_context():
        withdrawal = service.fresh(made.id)
        assert withdrawal.status == "paid" and withdrawal.reversed_at is not None
        assert balances(teacher.id) == before
        assert platform(PlatformAccount.REDEMPTION) == redemption
        assert platform(PlatformAccount.FEES) == fees
        assert entries_of(made.id) == [
            ("withdrawal_hold", withdrawal.tokens),
            ("withdrawal_paid", withdrawal.tokens),
            ("adjustment", withdrawal.tokens),
        ]
        assert run_audit() == []
    assert "Paid, then reversed" in show(client, made.id)


def test_the_audit_flags_a_reversal_entry_of_a_withdrawal_not_marked_reversed(
    app, client, teacher, connect
):
    method_id = connected_method(app, client, connect, teacher)
    made = request(app, teacher, method_id, 1000)
    with app.app_context():
        withdrawal = service.fresh(made.id)
        ledger.unretire(
            withdrawal.user_id, withdrawal.tokens, withdrawal.fee_tokens,
            key="stray", reference=("withdrawal", made.id),
        )  # fmt: skip
        db.session.commit()
        found = [v for v in run_audit() if v.check == "withdrawal-settlement"]
        assert len(found) == 1 and "1 reversal entr(ies)" in found[0].detail


def test_a_reversal_before_the_lost_transfer_is_found_waits_for_it(app, client, teacher, connect):
    method_id = connected_method(app, client, connect, teacher)
    with app.app_context():
        before = balances(teacher.id)
    connect.lose_transfer_answers = 1
    made = request(app, teacher, method_id, 1000)
    (transfer,) = connect.made_transfers
    reversed_event = event("transfer.reversed", connect.reverse_transfer(transfer["id"]))
    # Not known yet as the withdrawal's transfer: Stripe is asked to send it again later.
    assert post_platform(client, reversed_event).status_code == 503
    with app.app_context():
        assert service.sweep() == 1  # found in its group: paid
        assert service.fresh(made.id).status == "paid"
    assert post_platform(client, reversed_event).get_json()["status"] == "handled"
    with app.app_context():
        withdrawal = service.fresh(made.id)
        assert withdrawal.reversed_at is not None
        assert balances(teacher.id) == before
        assert [kind for kind, _ in entries_of(made.id)] == [
            "withdrawal_hold", "withdrawal_paid", "adjustment",
        ]  # fmt: skip
        assert run_audit() == []


def test_the_audit_flags_a_withdrawal_marked_reversed_with_no_entry(app, client, teacher, connect):
    method_id = connected_method(app, client, connect, teacher)
    made = request(app, teacher, method_id, 1000)
    with app.app_context():
        db.session.execute(
            update(Withdrawal).where(Withdrawal.id == made.id).values(reversed_at=app_clock.now())
        )
        db.session.commit()
        found = [v for v in run_audit() if v.check == "withdrawal-settlement"]
        assert len(found) == 1 and "0 reversal entr(ies); it should have 1" in found[0].detail


def test_readiness_that_comes_before_the_account_is_stored_is_asked_for_again(
    app, client, teacher, connect
):
    import stripe

    connect.fail_next = 3  # Stripe made nothing: its answers were errors
    with app.app_context():
        user = db.session.get(User, teacher.id)
        with pytest.raises(stripe.StripeError):
            methods.connect_stripe(user, "https://x/r", "https://x/b", country="US")
        method = methods.stripe_method(user)
        assert method.stripe_account_id is None
        method_id = method.id
        # The account Stripe makes under the method's key, heard of before it is stored.
        account_id = stripe_connect.create_account(
            idempotency_key=f"soma-payout-method:{method_id}:account",
            email=user.email,
            country="US",
            metadata={"teacher_id": str(user.id), "payout_method_id": str(method_id)},
        )
    update_event = account_updated(connect, account_id, transfers="active")
    assert post_connect(client, update_event).status_code == 503
    assert "Not set up with Stripe yet" in methods_page(client)
    with app.app_context():
        methods.connect_stripe(
            db.session.get(User, teacher.id), "https://x/r", "https://x/b", country="US"
        )
        assert db.session.get(PayoutMethod, method_id).stripe_account_id == account_id
    assert post_connect(client, update_event).get_json()["status"] == "handled"
    assert "Receives transfers" in methods_page(client)
    assert list(connect.accounts) == [account_id]
