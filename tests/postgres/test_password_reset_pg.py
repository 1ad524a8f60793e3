"""One reset link submitted twice at once on PostgreSQL: one sets the password."""

from sqlalchemy import select

from soma.auth import reset
from soma.extensions import db
from soma.models import User
from tests.builders import make_user
from tests.helpers import errors, ok, race

PASSWORDS = ("violet kettle harbour drum", "amber lantern orchard sail")


def test_two_submits_of_one_link_at_once_set_one_password(app, wide_app):
    with wide_app.app_context():
        user = make_user("student", email="ann@example.com")
        token = reset.make_token(user)
    outcomes = race(wide_app, [lambda p=p: reset.reset_password(token, p).id for p in PASSWORDS])
    assert len(ok(outcomes)) == 1, outcomes
    (refused,) = errors(outcomes)
    assert isinstance(refused, reset.ResetLinkRefused)
    winner = PASSWORDS[[status for status, _ in outcomes].index("ok")]
    with wide_app.app_context():
        stored = db.session.scalar(select(User).where(User.email == "ann@example.com"))
        assert stored.check_password(winner)
        assert stored.session_version == 1  # the sessions ended once
