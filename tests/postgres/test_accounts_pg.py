"""Accounts on PostgreSQL under concurrency: racing sign-ups, each on its own connection."""

import threading

from sqlalchemy import func, select

from soma.auth import service
from soma.extensions import db
from soma.models import User
from tests.builders import DEFAULT_PASSWORD


def test_racing_signups_with_one_email_make_one_account(app):
    """Ten threads, each with its own connection, sign up the same email at once."""
    barrier = threading.Barrier(10)
    outcomes = []

    def sign_up(n):
        with app.app_context():
            barrier.wait()
            try:
                service.sign_up("Race@Example.com ", f"Racer {n}", DEFAULT_PASSWORD, "student")
                outcomes.append("created")
            except service.EmailTaken:
                outcomes.append("taken")

    threads = [threading.Thread(target=sign_up, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["created"] + ["taken"] * 9
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(User)) == 1
