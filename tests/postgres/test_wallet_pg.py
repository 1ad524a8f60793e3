"""Gifts and the history query on PostgreSQL: racing confirmations and keyset pages."""

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from soma.audit import run_audit
from soma.extensions import db
from soma.gifts.service import give_gift
from soma.models import Gift, JournalEntry, Notification, User, Wallet
from soma.wallet.history import history_page
from tests.helpers import balances, fund, make_user

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def test_a_gift_confirmed_twice_at_once_is_given_once(app):
    with app.app_context():
        ann_id = make_user("student", email="ann@example.com").id
        bea_id = make_user("student", email="bea@example.com").id
        fund(ann_id, 100)

    barrier = threading.Barrier(6)
    outcomes = []

    def confirm():
        with app.app_context():
            sender = db.session.get(User, ann_id)
            barrier.wait()
            gift, created = give_gift(sender, "bea@example.com", 30, "hi", "same-nonce-1234567")
            outcomes.append((gift.id, created))

    threads = [threading.Thread(target=confirm) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(outcomes) == 6
    assert len({gift_id for gift_id, _ in outcomes}) == 1
    assert sum(created for _, created in outcomes) == 1
    with app.app_context():
        assert balances(ann_id) == (70, 0)
        assert balances(bea_id) == (30, 0)
        assert db.session.scalar(select(func.count()).select_from(Gift)) == 1
        assert db.session.scalar(select(func.count()).select_from(Notification)) == 1
        assert run_audit() == []


def test_history_keyset_pages_cover_every_entry_once_on_postgres(app):
    with app.app_context():
        student_id = make_user("student").id
        ids = []
        for i in range(60):
            # Pairs share an instant, so the entry id must break the tie.
            ids.append(fund(student_id, 1, now=T0 + timedelta(minutes=i // 2)).id)
        wallet_id = db.session.scalar(select(Wallet.id).where(Wallet.user_id == student_id))

        seen, cursor = [], None
        while True:
            page = history_page(wallet_id, cursor=cursor, limit=7)
            seen += [row.entry_id for row in page.rows]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        created = dict(db.session.execute(select(JournalEntry.id, JournalEntry.created_at)).all())
        assert seen == sorted(ids, key=lambda i: (created[i], i), reverse=True)
        assert [row.available_after for row in history_page(wallet_id, limit=3).rows] == [
            60,
            59,
            58,
        ]
