"""Two admins at once on PostgreSQL: a package retired twice, a price published twice."""

import threading
from datetime import timedelta

from sqlalchemy import select

from soma.extensions import db
from soma.models import AdminAction, TokenPackage, TokenPricing, utcnow
from tests.builders import make_user
from tests.conftest import AuthActions
from tests.helpers import THREAD_TIMEOUT, csrf_from


def admins(app, count: int = 2) -> list:
    """Logged-in clients of `count` admins, with a CSRF token each."""
    clients = []
    for index in range(count):
        with app.app_context():
            email = make_user("admin", email=f"admin{index}@example.com").email
        client = app.test_client()
        assert AuthActions(client).login(email).status_code == 302
        token = csrf_from(client.get("/admin/packages").get_data(as_text=True))
        clients.append((client, token))
    return clients


def at_once(posts: list) -> list[int]:
    """Send each (client, url, data) in its own thread, released together; the statuses."""
    barrier = threading.Barrier(len(posts))
    statuses: list[int | None] = [None] * len(posts)

    def send(index: int, client, url: str, data: dict) -> None:
        barrier.wait(timeout=THREAD_TIMEOUT)
        statuses[index] = client.post(url, data=data).status_code

    threads = [
        threading.Thread(target=send, args=(i, *post), daemon=True) for i, post in enumerate(posts)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT)
    assert all(status is not None for status in statuses), statuses
    return statuses


def test_two_admins_retiring_one_package_retire_and_record_it_once(app):
    clients = admins(app)
    with app.app_context():
        package = db.session.scalars(select(TokenPackage.id).order_by(TokenPackage.id)).first()
    url = f"/admin/packages/{package}/retire"
    statuses = at_once([(c, url, {"csrf_token": t, "confirmed": "yes"}) for c, t in clients])
    assert statuses == [303, 303]  # the loser is told it was already retired
    with app.app_context():
        assert db.session.get(TokenPackage, package).active is False
        recorded = db.session.scalars(select(AdminAction.action)).all()
        assert recorded == ["retire_package"]


def test_two_admins_publishing_at_once_get_one_record_per_version_published(app):
    clients = admins(app)
    start = (utcnow() + timedelta(days=1)).replace(second=0, microsecond=0)
    posts = [
        (
            client,
            "/admin/pricing",
            {
                "csrf_token": token,
                "user_type": "teacher",
                "tokens": "10",
                "price": price,
                "class_tokens_per_hour": "",
                "confirmed": "yes",
                "effective_at": (start + timedelta(hours=index)).strftime("%Y-%m-%dT%H:%M"),
            },
        )
        for index, ((client, token), price) in enumerate(
            zip(clients, ("0.50", "0.60"), strict=True)
        )
    ]
    statuses = sorted(at_once(posts))
    with app.app_context():
        versions = db.session.scalars(
            select(TokenPricing.version).where(TokenPricing.user_type == "teacher")
        ).all()
        recorded = db.session.scalars(select(AdminAction.object_id)).all()
        new = db.session.scalars(
            select(TokenPricing.id).where(
                TokenPricing.user_type == "teacher", TokenPricing.version > 1
            )
        ).all()
    # Each publish takes the next version number; the unique version refuses the second
    # of two that read the same latest version (it is asked to send the form again).
    if statuses == [303, 409]:
        assert sorted(versions) == [1, 2] and recorded == new and len(new) == 1
    else:
        assert statuses == [303, 303]  # one committed before the other read the versions
        assert sorted(versions) == [1, 2, 3] and sorted(recorded) == sorted(new)
