"""Migration 0012 on a database the old code filled: each class gets its booked end, and
classes that break the new rules stop the upgrade, named, before anything changes."""

import importlib.util
from datetime import UTC, datetime, timedelta
from pathlib import Path

import flask_migrate
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import func, select

from soma.extensions import db
from soma.models import ClassSession, UTCDateTime

MIGRATION = Path(__file__).parents[2] / "migrations" / "versions" / "0012_booking_rules.py"
BOOKED = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def revisions() -> tuple[str, str]:
    spec = importlib.util.spec_from_file_location("booking_rules", MIGRATION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.revision, module.down_revision


USERS = sa.table(
    "users",
    sa.column("id", sa.Integer()),
    sa.column("email", sa.String()),
    sa.column("display_name", sa.String()),
    sa.column("password_hash", sa.String()),
    sa.column("role", sa.String()),
    sa.column("created_at", UTCDateTime()),
)
CLASSES = sa.table(
    "class_sessions",
    *(sa.column(name) for name in ("id", "booking_key", "student_id", "teacher_id", "title")),
    sa.column("scheduled_start", UTCDateTime()),
    *(sa.column(name) for name in ("duration_minutes", "cost_tokens", "status", "version")),
    sa.column("active_seconds"),
    sa.column("created_at", UTCDateTime()),
)


def old_class(class_id: int, student: int, teacher: int, start: datetime, status="scheduled"):
    return {"id": class_id, "booking_key": f"old{class_id}", "student_id": student,
            "teacher_id": teacher, "title": "Old", "scheduled_start": start,
            "duration_minutes": 60, "cost_tokens": 10, "status": status, "version": 0,
            "active_seconds": 0, "created_at": BOOKED - timedelta(days=1)}  # fmt: skip


@pytest.fixture
def before_0012(app):
    """The test's database brought back to the migration before 0012, with users 1-3
    (students 1 and 2, teacher 3) and no classes."""
    _, previous = revisions()
    with app.app_context():
        flask_migrate.downgrade(revision=previous)
        db.session.execute(
            USERS.insert(),
            [{"id": n, "email": f"u{n}@example.com", "display_name": f"U{n}",
              "password_hash": "x", "role": "teacher" if n == 3 else "student",
              "created_at": BOOKED} for n in (1, 2, 3)],
        )  # fmt: skip
        db.session.commit()
        yield
        db.session.remove()


def test_existing_classes_get_their_booked_end(app, before_0012):
    with app.app_context():
        db.session.execute(
            CLASSES.insert(),
            [old_class(1, 1, 3, BOOKED), old_class(2, 2, 3, BOOKED + timedelta(hours=1))],
        )
        db.session.commit()
        flask_migrate.upgrade()
        ends = db.session.execute(
            select(ClassSession.id, ClassSession.scheduled_end).order_by(ClassSession.id)
        ).all()
        assert [tuple(row) for row in ends] == [
            (1, BOOKED + timedelta(hours=1)),
            (2, BOOKED + timedelta(hours=2)),  # back to back: no overlap
        ]


def test_overlapping_or_double_live_classes_stop_the_upgrade_until_resolved(app, before_0012):
    with app.app_context():
        db.session.execute(
            CLASSES.insert(),
            [
                old_class(1, 1, 3, BOOKED),
                old_class(2, 2, 3, BOOKED + timedelta(minutes=30)),  # the teacher, twice
                old_class(3, 1, 3, BOOKED - timedelta(days=1), "in_progress"),
                old_class(4, 1, 3, BOOKED - timedelta(days=2), "paused"),  # two live
                old_class(5, 2, 3, BOOKED, "cancelled"),  # final: occupies nothing
            ],
        )
        db.session.commit()
        config = app.extensions["migrate"].migrate.get_config()
        with pytest.raises(RuntimeError) as refused:  # through Alembic, to see the error
            command.upgrade(config, "head")
        assert str(refused.value) == (
            "Cannot add the booking constraints: classes 4 and 3 are both live (teacher); "
            "classes 1 and 2 overlap (same teacher); classes 4 and 3 are both live (student). "
            "Cancel (or end) one class of each, then upgrade again."
        )
        db.session.rollback()
        _, previous = revisions()
        current = db.session.scalar(sa.text("SELECT version_num FROM alembic_version"))
        assert current == previous
        assert "scheduled_end" not in {
            column["name"] for column in sa.inspect(db.engine).get_columns("class_sessions")
        }
        db.session.execute(
            CLASSES.update().where(CLASSES.c.id.in_([2, 4])).values(status="cancelled")
        )
        db.session.commit()
        flask_migrate.upgrade()
        assert db.session.scalar(select(func.count()).select_from(ClassSession)) == 5
        assert db.session.scalar(sa.text("SELECT version_num FROM alembic_version")) != previous
