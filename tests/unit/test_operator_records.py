"""The operator's records: admin actions are append-only and committed with their action;
an alert is raised once per cause."""

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DatabaseError

from soma.admin import actions
from soma.alerts import raise_alert
from soma.extensions import db
from soma.models import AdminAction, Alert
from tests.builders import make_user


def test_an_action_is_recorded_with_before_and_after_and_cannot_be_changed(app):
    with app.app_context():
        admin = make_user("admin", email="a@example.com")
        student = make_user("student", email="s@example.com")
        row = actions.record(
            admin, "freeze", "user", student.id, {"frozen": False}, {"frozen": True}, "chargebacks"
        )
        db.session.commit()
        stored = db.session.get(AdminAction, row.id)
        assert (stored.admin_id, stored.action, stored.object_type, stored.object_id) == (
            admin.id,
            "freeze",
            "user",
            student.id,
        )
        assert actions.values(stored.before) == {"frozen": False}
        assert actions.values(stored.after) == {"frozen": True}
        assert stored.reason == "chargebacks"
        for statement in ("UPDATE admin_actions SET action = 'x'", "DELETE FROM admin_actions"):
            with pytest.raises(DatabaseError, match="append-only"):
                db.session.execute(text(statement))
            db.session.rollback()
        assert db.session.scalar(select(AdminAction.action)) == "freeze"


def test_an_action_rolled_back_leaves_no_record(app):
    with app.app_context():
        admin = make_user("admin", email="a@example.com")
        actions.record(admin, "freeze", "user", admin.id, {}, {})
        db.session.rollback()
        assert db.session.scalar(select(func.count()).select_from(AdminAction)) == 0


def test_an_alert_is_raised_once_per_cause(app):
    with app.app_context():
        student = make_user("student", email="s@example.com")
        assert raise_alert("dispute", "dispute:7", "A dispute", user_id=student.id)
        assert not raise_alert("dispute", "dispute:7", "Again", user_id=student.id)
        assert raise_alert("dispute", "dispute:8", "Another", user_id=student.id)
        db.session.commit()
        messages = db.session.scalars(select(Alert.message).order_by(Alert.id)).all()
        assert messages == ["A dispute", "Another"]
        assert all(alert.is_open for alert in db.session.scalars(select(Alert)))
