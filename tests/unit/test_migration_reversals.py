"""Migration 0008: old refund and dispute counters become reversal records, on a database
that holds purchases, without losing an amount or a token."""

from datetime import UTC, datetime, timedelta

import flask_migrate
import pytest
from sqlalchemy import text

from soma.extensions import db
from soma.models import Purchase
from soma.purchases import reversals
from tests.conftest import make_app
from tests.helpers import balances

OLD = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture
def old_app(tmp_path):
    app = make_app(f"sqlite:///{tmp_path / 'old.db'}")
    with app.app_context():
        flask_migrate.upgrade(revision="0007")
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_old_counters_become_reversals_and_a_later_report_is_not_counted_twice(old_app):
    with old_app.app_context():
        run = db.session.execute
        run(text("INSERT INTO users (id, email, display_name, password_hash, role, created_at) "
                 "VALUES (1, 's@example.com', 'S', 'x', 'student', :t)"), {"t": OLD})  # fmt: skip
        run(text("INSERT INTO wallets (user_id, is_source, available, locked, created_at) "
                 "VALUES (1, false, 0, 0, :t)"), {"t": OLD})  # fmt: skip
        for pid, refunded, short, disputed in ((1, 1000, 0, 0), (2, 0, 7, 500), (3, 0, 0, 0)):
            run(
                text(
                    "INSERT INTO purchases (id, idempotency_key, user_id, tokens, bonus_tokens, "
                    "amount_minor, currency, provider, status, version, payment_intent_id, "
                    "checkout_request_id, refunded_minor, shortfall_tokens, disputed_minor, "
                    "dispute_tokens, created_at, updated_at) VALUES (:id, :key, 1, 250, 10, "
                    "2500, 'USD', 'stripe', :status, 1, :pi, :claim, :refunded, :short, "
                    ":disputed, 0, :t, :t)"
                ),
                {"id": pid, "key": f"k{pid}", "pi": f"pi_{pid}", "refunded": refunded,
                 "short": short, "disputed": disputed, "t": OLD,
                 "claim": "claim:abc" if pid == 3 else None,
                 "status": "disputed" if disputed else "paid"},
            )  # fmt: skip
            run(text("INSERT INTO purchase_events (purchase_id, from_status, to_status, source, "
                     "note, at) VALUES (:id, NULL, 'pending', 'student', '', :t)"),
                {"id": pid, "t": OLD})  # fmt: skip
        db.session.commit()
        flask_migrate.upgrade()  # foreign keys point at purchases: SQLite must rebuild it

        found = {r.provider_ref: r for pid in (1, 2) for r in reversals.reversals_of(pid)}
        rows = {
            ref: (r.kind, r.amount_minor, r.status, r.tokens_short, r.bonus_short)
            for ref, r in found.items()
        }
        # No old entry took anything back here: all of what each was due is owed.
        assert rows == {
            "legacy:refund:1": ("refund", 1000, "succeeded", 100, 4),
            "legacy:dispute:2": ("dispute", 500, "open", 50, 2),
        }
        claims = db.session.execute(
            text("SELECT checkout_request_id, push_started_at FROM purchases WHERE id = 3")
        ).one()
        assert claims[0] is None and claims[1] is not None  # the old claim, as a claim
        assert balances(1) == (0, 0)

        # Stripe later lists the two refunds made before the migration: folded into the
        # legacy row, not counted again.
        made = OLD + timedelta(hours=1)
        reversals.report(1, "re_old_a", "succeeded", 400, "stripe:evt", made)
        reversals.report(1, "re_old_b", "succeeded", 600, "stripe:evt", made)
        refs = sorted((r.provider_ref, r.amount_minor) for r in reversals.reversals_of(1))
        assert refs == [("re_old_a", 400), ("re_old_b", 600)]

        # The old dispute's own id, when Stripe next speaks of it, is the same dispute.
        reversals.report(2, "dp_old", "won", 500, "stripe:evt")
        (dispute,) = reversals.reversals_of(2)
        assert (dispute.provider_ref, dispute.status, dispute.shortfall) == ("dp_old", "won", 0)
        assert db.session.get(Purchase, 2).status == "paid"
