"""A purchase's fulfilment (on PostgreSQL: one statement, nothing
read first, the words written in SQL): what it writes is what Python writes, whatever the
app's settings and the order the provider's events come in, and the purchase it returns is
the one the session then works with."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import select, update

from soma.audit import run_audit
from soma.extensions import db
from soma.models import JournalEntry, Notification, Purchase
from soma.notifications.service import email_text
from soma.purchases import service
from tests.buying import credit_mail_of, replay_credits, sandbox_purchase
from tests.helpers import balances


def bought(tokens: int = 250, bonus: bool = True) -> tuple[int, int]:
    """A pending sandbox purchase of a new student's: (purchase id, user id)."""
    purchase_id = sandbox_purchase(tokens=tokens, bonus=bonus)
    return purchase_id, db.session.get(Purchase, purchase_id).user_id


@pytest.mark.parametrize(
    "base",
    [
        "https://soma.example/t%C3%A9",  # a percent-encoded path: fails on PostgreSQL
        "https://soma.example/o'b\\{x}}--$1",  # quotes, backslashes, braces: held
    ],
    ids=["percent", "quote"],
)
def test_a_credit_email_is_pythons_whatever_the_base_url_holds(app, base):
    """An APP_BASE_URL with a percent-encoded character (a path under a unicode name), or
    characters SQL or str.format treat specially: the email's links are the address."""
    with app.app_context():
        app.config["APP_BASE_URL"] = base
        purchase_id, user_id = bought()
        student_name = db.session.get(service.User, user_id).display_name

        service.fulfil(purchase_id, "stripe:evt_pct")
        db.session.expire_all()
        note, mail = credit_mail_of(purchase_id)
        subject, body = email_text(student_name, note.message, note.link)
        assert f"{base}/buy/purchases/" in body
        assert (mail.subject, mail.body) == (subject, body)


def test_the_purchase_fulfil_returns_is_the_sessions_and_can_be_changed_and_saved(app):
    """The purchase put in the session by fulfil is an ordinary persistent object: the
    session's own, read again without a query, changed and flushed like any other."""
    with app.app_context():
        purchase_id, user_id = bought()
        db.session.expunge_all()

        done = service.fulfil(purchase_id, "stripe:evt_1", receipt="R-9")
        assert db.session.get(Purchase, purchase_id) is done
        assert (done.status, done.receipt, done.user.id) == ("paid", "R-9", user_id)
        checked = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        credited = done.credited_entry_id
        assert credited is not None
        done.checked_at = checked
        db.session.commit()
        db.session.expunge_all()
        again = db.session.get(Purchase, purchase_id)
        assert (again.checked_at, again.status, again.credited_entry_id) == (
            checked,
            "paid",
            credited,
        )
        assert balances(user_id) == (260, 0)


def test_a_purchase_loaded_before_fulfil_shows_the_credit_after_it(app):
    """A purchase the request read (and left expired by a commit, or as read in a
    transaction) is the one fulfil returns, with the values the credit left."""
    with app.app_context():
        purchase_id, user_id = bought()
        before = db.session.get(Purchase, purchase_id)
        assert before.status == "pending"  # read in the session's transaction

        done = service.fulfil(purchase_id, "stripe:evt_1", receipt="R-1")
        assert done is before
        assert (before.status, before.receipt, before.version) == ("paid", "R-1", 1)
        entry = db.session.scalar(
            select(JournalEntry.id).where(
                JournalEntry.idempotency_key == f"purchase:{purchase_id}:tokens"
            )
        )
        assert before.credited_entry_id == entry
        # The object is not stale for later code: a change to it is saved.
        before.failure_reason = "noted"
        db.session.commit()
        db.session.expire_all()
        assert db.session.get(Purchase, purchase_id).failure_reason == "noted"
        assert balances(user_id) == (260, 0)


def test_a_change_to_the_purchase_made_before_fulfil_is_not_lost(app):
    """The caller changed the purchase it holds (not yet flushed) and then fulfils it:
    its change is saved, as it was when the credit went through the session."""
    with app.app_context():
        purchase_id, user_id = bought()
        held = db.session.get(Purchase, purchase_id)
        db.session.commit()  # expires it; no transaction is open now
        checked = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
        held.checked_at = checked  # (sets without loading: no transaction begins)

        service.fulfil(purchase_id, "stripe:evt_1")
        db.session.commit()
        db.session.expire_all()
        stored = db.session.get(Purchase, purchase_id)
        assert stored.status == "paid"
        assert stored.checked_at == checked
        assert balances(user_id) == (260, 0)


def test_events_in_every_order_credit_once_and_a_replay_is_the_same_purchase(app):
    """Expired by the sweeper, paid late, the confirmation repeated, a failure reported
    after the payment: one credit, one notification, one email."""
    with app.app_context():
        purchase_id, user_id = bought()
        service.expire(purchase_id, "sweeper")
        first = service.fulfil(purchase_id, "stripe:evt_2", receipt="R-2")
        service.fail(purchase_id, "stripe:evt_fail", "card declined")  # late: changes nothing
        again = service.fulfil(purchase_id, "stripe:evt_2", receipt="R-OTHER")
        assert again is first
        db.session.expire_all()
        stored = db.session.get(Purchase, purchase_id)
        assert (stored.status, stored.receipt, stored.failure_reason) == ("paid", "R-2", None)
        assert balances(user_id) == (260, 0)
        notes = db.session.scalars(
            select(Notification.id).where(Notification.link == f"/buy/purchases/{purchase_id}")
        ).all()
        assert len(notes) == 1
        assert run_audit() == []


def test_a_purchase_paid_with_its_credited_entry_unmarked_gets_no_second_bonus(app):
    """A paid purchase whose credited entry was left unmarked (by hand, say) and whose
    bonus was credited: a late confirmation credits neither part again."""
    with app.app_context():
        purchase_id, user_id = bought()
        service.fulfil(purchase_id, "stripe:evt_1")
        db.session.execute(
            update(Purchase).where(Purchase.id == purchase_id).values(credited_entry_id=None)
        )
        db.session.commit()

        service.fulfil(purchase_id, "stripe:evt_1")
        assert balances(user_id) == (260, 0)
        bonus = db.session.scalars(
            select(JournalEntry.id).where(
                JournalEntry.idempotency_key == f"purchase:{purchase_id}:bonus"
            )
        ).all()
        assert len(bonus) == 1


def test_a_credit_through_the_ledger_after_fulfil_is_a_replay_for_a_large_kes_purchase(app):
    """The digest the SQL writes is Python's for any purchase: an M-Pesa (KES) purchase
    of a large student id and amount, replayed through ledger.credit, is a replay."""
    with app.app_context():
        purchase_id, user_id = bought()
        db.session.execute(
            update(Purchase)
            .where(Purchase.id == purchase_id)
            .values(tokens=9_999_999, bonus_tokens=1, amount_minor=2**40, currency="KES",
                    provider="mpesa")
        )  # fmt: skip
        db.session.commit()
        service.fulfil(purchase_id, "mpesa:cb_1", receipt="QWE123")
        replay_credits(purchase_id, user_id, 9_999_999, 1)
        assert balances(user_id) == (10_000_000, 0)
        assert run_audit() == []


def test_a_credit_email_to_a_student_of_any_name_is_pythons(app):
    """Unicode, braces, placeholders and the templates' own marks in a display name are
    the name, word for word, in the email the SQL writes."""
    with app.app_context():
        purchase_id, user_id = bought()
        name = "Wanjikũ 😀 {name} {link} %(p_key)s $1 \x01name\x01 AS x, é"
        db.session.get(service.User, user_id).display_name = name
        db.session.commit()

        service.fulfil(purchase_id, "stripe:evt_name")
        db.session.expire_all()
        note, mail = credit_mail_of(purchase_id)
        subject, body = email_text(name, note.message, note.link)
        assert body.startswith(f"Hello {name},\n")
        assert (mail.subject, mail.body) == (subject, body)
        assert balances(user_id) == (260, 0)
