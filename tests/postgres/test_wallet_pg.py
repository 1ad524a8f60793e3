"""Gifts on PostgreSQL: confirmations racing in threads, each with its own connection."""

import threading

from sqlalchemy import func, select

from soma.audit import run_audit
from soma.extensions import db
from soma.gifts.service import give_gift
from soma.models import Gift, Notification, User
from tests.builders import fund, make_user
from tests.helpers import balances


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
