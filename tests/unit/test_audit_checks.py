"""The audit's checks of who a class paid, locked tokens, entry tokens, copies and values.

Each corruption is made with raw SQL past the append-only triggers (dropped here,
on SQLite), as only someone bypassing the ledger could; the audit must name it.
"""

import importlib
import inspect
import pkgutil
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text
from werkzeug.security import generate_password_hash

import soma.audit
from soma import ledger
from soma.audit import CHECKS, Violation, run_audit
from soma.classes import service as classes
from soma.extensions import db
from soma.models import ClassSession, EntryKind, JournalEntry, PlatformAccount, Wallet
from tests.helpers import make_user

# Every audit here runs twice: full, and incremental from a checkpoint of the new database.
pytestmark = pytest.mark.usefixtures("audit_mode")


@pytest.fixture(autouse=True)
def cheap_password_hashes(monkeypatch):
    """Passwords play no part here: hash them in one round so that users build fast."""
    monkeypatch.setattr(
        "soma.models.user.generate_password_hash",
        lambda password: generate_password_hash(password, method="pbkdf2:sha256:1"),
    )


def allow_edits(*tables: str) -> None:
    """Let this transaction edit append-only `tables`, as an attacker with the database
    would: on SQLite drop their UPDATE triggers (migration 0002); on PostgreSQL switch
    triggers off until the transaction ends."""
    if db.session.connection().dialect.name == "postgresql":
        db.session.execute(text("SET LOCAL session_replication_role = replica"))
        return
    for table in tables:
        db.session.execute(text(f"DROP TRIGGER {table}_append_only_update"))


def entry_id(key: str) -> int:
    return db.session.scalar(select(JournalEntry.id).where(JournalEntry.idempotency_key == key))


def wallet_id(user_id: int) -> int:
    return db.session.scalar(select(Wallet.id).where(Wallet.user_id == user_id))


def codes(violations: list[Violation]) -> set[str]:
    return {violation.check for violation in violations}


def activity() -> dict[str, int]:
    """A finished class, a withdrawal, gifts, a refund and a price change: real activity."""
    student, teacher, other_teacher, friend = (
        make_user(role) for role in ("student", "teacher", "teacher", "student")
    )
    people = {
        "student": student.id,
        "teacher": teacher.id,
        "other_teacher": other_teacher.id,
        "friend": friend.id,
    }
    db.session.commit()
    now = datetime.now(UTC).replace(microsecond=0)
    with ledger.atomic():
        ledger.credit(student.id, 50, key="buy", now=now)
        ledger.credit(
            student.id,
            10,
            key="bonus",
            kind=EntryKind.BONUS,
            source=PlatformAccount.PROMOTIONS,
            now=now,
        )
    start = now + timedelta(hours=1)
    session = classes.book(student, teacher.id, "Fractions", start, 60, key="class", now=now)
    session = classes.act(session, classes.Action.START, teacher, now=start)
    session = classes.settle_if_due(session, now=start + timedelta(minutes=61))
    people["class"] = session.id
    later = start + timedelta(hours=2)
    # A dearer student price from then on: entries before keep their frozen values.
    ledger.publish_pricing("student", 10, 150, 10, effective_at=later, backdate=True)
    db.session.commit()
    after = later + timedelta(minutes=1)
    with ledger.atomic():
        ledger.transfer(student.id, friend.id, 5, key="gift", now=after)
        ledger.debit(friend.id, 2, key="refund", now=after)
        held = ledger.hold(student.id, 10, key="hold:open", now=after)
        ledger.hold(student.id, 3, key="hold:released", now=after)
        withdrawal = ledger.hold(
            teacher.id, 7, key="withdraw", kind=EntryKind.WITHDRAWAL_HOLD, now=after
        )
    with ledger.atomic():
        ledger.release(entry_id("hold:released"), key="release", now=after)
        ledger.settle(
            withdrawal.id,
            7,
            key="paid",
            to_platform=PlatformAccount.REDEMPTION,
            kind=EntryKind.WITHDRAWAL_PAID,
            now=after,
        )
    people["open_hold"] = held.id
    return people


def test_every_check_in_the_package_is_in_the_one_list(ctx):
    """A check written in soma/audit/ but left out of CHECKS would never run."""
    written = set()
    for module_info in pkgutil.iter_modules(soma.audit.__path__):
        module = importlib.import_module(f"soma.audit.{module_info.name}")
        for name, function in inspect.getmembers(module, inspect.isfunction):
            returns = inspect.signature(function).return_annotation
            public = function.__module__ == module.__name__ and not name.startswith("_")
            if public and returns == list[Violation]:
                written.add(function)
    assert written == set(CHECKS)
    assert len(CHECKS) == len(set(CHECKS))


def test_a_ledger_with_real_activity_and_a_price_change_passes_every_check(ctx):
    people = activity()
    session = db.session.get(ClassSession, people["class"])
    assert (session.status, session.charged_tokens) == ("completed", 10)
    student = db.session.scalar(select(Wallet).where(Wallet.user_id == people["student"]))
    assert (student.available, student.locked) == (50 - 10 + 10 - 5 - 10, 10)
    gift = db.session.scalar(select(JournalEntry).where(JournalEntry.idempotency_key == "gift"))
    assert (gift.usd_cents, gift.teacher_usd_cents) == (75, 20)  # 5 tokens at 15 ¢ and at 4 ¢
    assert run_audit() == []


def test_the_audit_names_a_class_hold_taken_from_another_students_wallet(ctx):
    people = activity()
    hold_id = db.session.get(ClassSession, people["class"]).hold_entry_id
    allow_edits("postings")
    db.session.execute(
        text("UPDATE postings SET wallet_id = :other WHERE entry_id = :hold"),
        {"other": wallet_id(people["friend"]), "hold": hold_id},
    )
    db.session.commit()
    assert (
        Violation(
            "class-wrong-party",
            f"class {people['class']}'s class_hold entry {hold_id} posts to 2 wallet(s) "
            "of neither its student nor its teacher",
        )
        in run_audit()
    )


def test_the_audit_names_a_class_settle_that_paid_another_teacher(ctx):
    people = activity()
    settle_id = db.session.get(ClassSession, people["class"]).closing_entry_id
    allow_edits("postings")
    db.session.execute(
        text("UPDATE postings SET wallet_id = :other WHERE entry_id = :settle AND wallet_id = :t"),
        {
            "other": wallet_id(people["other_teacher"]),
            "settle": settle_id,
            "t": wallet_id(people["teacher"]),
        },
    )
    db.session.commit()
    assert (
        Violation(
            "class-wrong-party",
            f"class {people['class']}'s class_settle entry {settle_id} posts to 1 wallet(s) "
            "of neither its student nor its teacher, pays its teacher 0 time(s), not once",
        )
        in run_audit()
    )


def test_the_audit_names_locked_tokens_no_open_hold_explains(ctx):
    """Unlinking a release from its hold leaves every balance check satisfied."""
    people = activity()
    allow_edits("journal_entries")
    db.session.execute(
        text("UPDATE journal_entries SET closes_entry_id = NULL WHERE idempotency_key = 'release'")
    )
    db.session.commit()
    assert run_audit() == [
        Violation(
            "locked-not-open-holds",
            f"wallet {wallet_id(people['student'])} (user {people['student']}) has 10 locked "
            "but its open holds lock 13",
        )
    ]


def test_the_audit_names_an_entry_whose_tokens_are_not_what_its_postings_moved(ctx):
    activity()
    allow_edits("journal_entries")
    db.session.execute(text("UPDATE journal_entries SET tokens = 6 WHERE idempotency_key = 'paid'"))
    db.session.commit()
    violations = run_audit()
    assert (
        Violation(
            "entry-tokens-mismatch",
            f"withdrawal_paid entry {entry_id('paid')} says 6 tokens but its postings move 7",
        )
        in violations
    )
    assert codes(violations) == {"entry-tokens-mismatch", "entry-value-mismatch"}


def test_the_audit_names_a_posting_whose_kind_or_time_is_not_its_entrys(ctx):
    activity()
    gift = entry_id("gift")
    allow_edits("postings")
    db.session.execute(
        text(
            "UPDATE postings SET kind = 'purchase' "
            "WHERE id = (SELECT min(id) FROM postings WHERE entry_id = :gift)"
        ),
        {"gift": gift},
    )
    db.session.execute(
        text(
            "UPDATE postings SET created_at = '2001-01-01 00:00:00.000000' "
            "WHERE id = (SELECT max(id) FROM postings WHERE entry_id = :gift)"
        ),
        {"gift": gift},
    )
    db.session.commit()
    first, second = sorted(
        db.session.scalars(text("SELECT id FROM postings WHERE entry_id = :g"), {"g": gift})
    )
    differs = f"differs from its entry {gift} in kind or time"
    assert run_audit() == [
        Violation("posting-entry-mismatch", f"posting {first} {differs}"),
        Violation("posting-entry-mismatch", f"posting {second} {differs}"),
    ]


def test_the_audit_names_an_entry_valued_at_other_rates_than_those_in_force(ctx):
    """The gift came after the price change: 5 tokens are worth 75 cents, not the old 50."""
    activity()
    gift = entry_id("gift")
    allow_edits("journal_entries")
    db.session.execute(text("UPDATE journal_entries SET usd_cents = 50 WHERE id = :g"), {"g": gift})
    db.session.commit()
    assert run_audit() == [
        Violation(
            "entry-value-mismatch",
            f"entry {gift} is worth 50 and 20 cents but the pricing in force then makes it "
            "75 and 20",
        )
    ]
