"""The test data builders make what they say, through the services, on every backend."""

import pytest
from sqlalchemy import select

from soma.audit import run_audit
from soma.extensions import db
from soma.models import ClassSession, JournalEntry, Purchase
from tests.builders import (
    CLASS_STATES,
    DEFAULT_PASSWORD,
    make_class,
    make_funded_user,
    make_user,
    paid_purchase,
)
from tests.helpers import balances


def kinds_for(reference_type: str, reference_id: int) -> list[tuple[str, int]]:
    rows = db.session.execute(
        select(JournalEntry.kind, JournalEntry.tokens)
        .where(
            JournalEntry.reference_type == reference_type,
            JournalEntry.reference_id == reference_id,
        )
        .order_by(JournalEntry.id)
    ).all()
    return [tuple(row) for row in rows]


@pytest.mark.parametrize("role", ["student", "teacher", "admin"])
def test_a_user_of_each_role_can_log_in(client, auth, ctx, role):
    user = make_user(role)
    assert (user.role, balances(user.id)) == (role, (0, 0))
    assert auth.login(user.email, DEFAULT_PASSWORD).status_code == 302


def test_a_funded_wallet_is_credited_through_the_ledger(ctx):
    student = make_funded_user(40)
    assert balances(student.id) == (40, 0)
    (entry,) = db.session.scalars(select(JournalEntry)).all()
    assert (entry.kind, entry.tokens) == ("purchase", 40)
    assert run_audit() == []


def test_a_paid_purchase_is_paid_and_credited_once(ctx):
    student = make_user("student")
    custom = paid_purchase(student, tokens=30)
    package = paid_purchase(student)
    assert db.session.get(Purchase, custom.id).status == "paid"
    assert kinds_for("purchase", custom.id) == [("purchase", 30)]
    assert balances(student.id) == (30 + package.total_tokens, 0)
    assert run_audit() == []


# The cost of an hour is 10 tokens; ten minutes of it, 2.
EXPECTED = {
    "scheduled": ((20, 0), [], (0, 0)),
    "in_progress": ((10, 10), [("class_hold", 10)], (0, 0)),
    "paused": ((10, 10), [("class_hold", 10)], (0, 0)),
    "completed": ((10, 0), [("class_hold", 10), ("class_settle", 10)], (10, 0)),
    "ended_early": ((18, 0), [("class_hold", 10), ("class_settle", 2)], (2, 0)),
    "cancelled": ((20, 0), [], (0, 0)),
}


@pytest.mark.parametrize("state", CLASS_STATES)
def test_a_class_is_brought_to_each_state_and_its_tokens_move_with_it(ctx, clock, state):
    student, teacher = make_funded_user(20), make_user("teacher")
    session = make_class(student, teacher, state)
    student_money, entries, teacher_money = EXPECTED[state]
    db.session.expire_all()
    assert db.session.get(ClassSession, session.id).status == state
    assert balances(student.id) == student_money
    assert balances(teacher.id) == teacher_money
    assert kinds_for("class", session.id) == entries
    assert run_audit() == []
