"""The ledger on each database: what each money operation moves, writes and refuses."""

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from soma import ledger
from soma.extensions import db
from soma.ledger.core import Leg, platform_account, post, user_account
from soma.ledger.pricing import tokens_value_cents
from soma.ledger.shards import shard_count, shard_for
from soma.models import Bucket, EntryKind, JournalEntry, PlatformAccount, Posting, Wallet
from tests.builders import fund, make_user

AVAILABLE, LOCKED = Bucket.AVAILABLE, Bucket.LOCKED
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
_keys = itertools.count(1)


def key(label: str = "op") -> str:
    return f"test:{label}:{next(_keys)}"


def balances(user_id: int) -> tuple[int, int]:
    """(available, locked) of the user's wallet, read straight from the table."""
    row = db.session.execute(
        select(Wallet.available, Wallet.locked).where(Wallet.user_id == user_id)
    ).one()
    return row.available, row.locked


def platform(code: str) -> int:
    return db.session.scalar(select(func.sum(Wallet.available)).where(Wallet.code == code))


def platform_balances() -> dict[str, int]:
    rows = db.session.execute(
        select(Wallet.code, func.sum(Wallet.available))
        .where(Wallet.code.is_not(None))
        .group_by(Wallet.code)
    )
    return dict(rows.all())


def postings_of(entry_id: int) -> dict[tuple[str, str], tuple[int, int, int]]:
    """{(owner, bucket): (amount, available_after, locked_after)} of one entry."""
    rows = db.session.execute(
        select(
            Wallet.code,
            Wallet.user_id,
            Posting.bucket,
            Posting.amount,
            Posting.available_after,
            Posting.locked_after,
        )
        .join(Wallet, Wallet.id == Posting.wallet_id)
        .where(Posting.entry_id == entry_id)
    ).all()
    return {
        (code or f"user:{user_id}", bucket): (amount, available_after, locked_after)
        for code, user_id, bucket, amount, available_after, locked_after in rows
    }


def count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def entry(entry_id: int) -> JournalEntry:
    return db.session.get(JournalEntry, entry_id)


def snapshot() -> tuple:
    """Everything the ledger holds, to prove a refused operation changed nothing."""
    return (
        db.session.execute(text("SELECT * FROM wallets ORDER BY id")).all(),
        db.session.execute(text("SELECT * FROM journal_entries ORDER BY id")).all(),
        db.session.execute(text("SELECT * FROM postings ORDER BY id")).all(),
    )


@pytest.fixture
def student(ctx) -> int:
    user_id = make_user("student").id
    db.session.commit()
    return user_id


@pytest.fixture
def teacher(ctx) -> int:
    user_id = make_user("teacher").id
    db.session.commit()
    return user_id


@pytest.fixture
def other_student(ctx) -> int:
    user_id = make_user("student").id
    db.session.commit()
    return user_id


def test_credit_issues_tokens_and_issuance_goes_negative(student):
    with ledger.atomic():
        posted = ledger.credit(
            student,
            10,
            key="purchase:1",
            reference=("purchase", 41),
            memo="Bought 10 tokens",
            now=T0,
        )

    assert posted.kind == EntryKind.PURCHASE and posted.tokens == 10 and not posted.replayed
    assert balances(student) == (10, 0)
    assert platform("issuance") == -10
    written = entry(posted.id)
    assert written.kind == EntryKind.PURCHASE
    assert written.idempotency_key == "purchase:1"
    assert written.tokens == 10
    assert written.memo == "Bought 10 tokens"
    assert (written.reference_type, written.reference_id) == ("purchase", 41)
    assert (written.usd_cents, written.teacher_usd_cents) == (100, 40)
    assert written.closes_entry_id is None
    assert written.created_at == T0
    assert postings_of(posted.id) == {
        ("issuance", AVAILABLE): (-10, -10, 0),
        (f"user:{student}", AVAILABLE): (10, 10, 0),
    }

    fund(student, 15)
    assert balances(student) == (25, 0)
    assert platform("issuance") == -25


def test_postings_repeat_their_entry_kind_and_time(student):
    with ledger.atomic():
        posted = ledger.credit(student, 10, key=key(), now=T0)
    rows = db.session.scalars(select(Posting).where(Posting.entry_id == posted.id)).all()
    assert len(rows) == 2
    assert {(p.kind, p.created_at) for p in rows} == {(EntryKind.PURCHASE, T0)}


def test_bonus_credit_comes_from_promotions(student):
    with ledger.atomic():
        posted = ledger.credit(
            student, 100, key=key(), kind=EntryKind.BONUS, source=PlatformAccount.PROMOTIONS
        )

    assert balances(student) == (100, 0)
    assert platform("promotions") == -100
    assert platform("issuance") == 0
    assert entry(posted.id).kind == EntryKind.BONUS
    assert (entry(posted.id).usd_cents, entry(posted.id).teacher_usd_cents) == (1000, 400)
    assert postings_of(posted.id) == {
        ("promotions", AVAILABLE): (-100, -100, 0),
        (f"user:{student}", AVAILABLE): (100, 100, 0),
    }


def test_debit_returns_tokens_to_issuance(student):
    fund(student, 30)
    with ledger.atomic():
        posted = ledger.debit(student, 12, key=key(), reference=("purchase", 3), memo="Refund")

    assert balances(student) == (18, 0)
    assert platform("issuance") == -18
    written = entry(posted.id)
    assert (written.kind, written.tokens, written.memo) == (EntryKind.REFUND, 12, "Refund")
    assert (written.reference_type, written.reference_id) == ("purchase", 3)
    assert (written.usd_cents, written.teacher_usd_cents) == (120, 48)
    # Each shard of issuance has its own balance: the refund's shard (its reference's)
    # had issued nothing, unless the funding was on it too.
    shard = db.session.get(Wallet, posting_wallet(posted.id, "issuance"))
    assert shard.shard == shard_for("purchase:3", shard_count())
    assert postings_of(posted.id) == {
        ("issuance", AVAILABLE): (12, shard.available, 0),
        (f"user:{student}", AVAILABLE): (-12, 18, 0),
    }
    assert shard.available in (12, -18)


def test_hold_moves_tokens_from_available_to_locked(student):
    fund(student, 30)
    before = platform_balances()
    with ledger.atomic():
        posted = ledger.hold(student, 10, key=key(), reference=("class", 7), memo="Class hold")

    assert balances(student) == (20, 10)
    assert platform_balances() == before
    written = entry(posted.id)
    assert (written.kind, written.tokens, written.memo) == (EntryKind.CLASS_HOLD, 10, "Class hold")
    assert (written.reference_type, written.reference_id) == ("class", 7)
    assert (written.usd_cents, written.teacher_usd_cents) == (100, 40)
    assert postings_of(posted.id) == {
        (f"user:{student}", AVAILABLE): (-10, 20, 10),
        (f"user:{student}", LOCKED): (10, 20, 10),
    }


def test_full_settle_pays_the_teacher_and_empties_the_hold(student, teacher):
    fund(student, 30)
    with ledger.atomic():
        held = ledger.hold(student, 10, key=key(), reference=("class", 7))
    with ledger.atomic():
        settled = ledger.settle(held.id, 10, key=key(), to_user_id=teacher, reference=("class", 7))

    assert balances(student) == (20, 0)
    assert balances(teacher) == (10, 0)
    written = entry(settled.id)
    assert (written.kind, written.tokens) == (EntryKind.CLASS_SETTLE, 10)
    assert written.closes_entry_id == held.id
    assert (written.usd_cents, written.teacher_usd_cents) == (100, 40)
    assert postings_of(settled.id) == {
        (f"user:{student}", LOCKED): (-10, 20, 0),
        (f"user:{teacher}", AVAILABLE): (10, 10, 0),
    }


def test_partial_settle_returns_the_rest_to_available(student, teacher):
    fund(student, 30)
    with ledger.atomic():
        held = ledger.hold(student, 10, key=key())
    with ledger.atomic():
        settled = ledger.settle(held.id, 8, key=key(), to_user_id=teacher, memo="45 of 60 min")

    assert balances(student) == (22, 0)
    assert balances(teacher) == (8, 0)
    written = entry(settled.id)
    assert (written.kind, written.tokens, written.memo) == (
        EntryKind.CLASS_SETTLE,
        8,
        "45 of 60 min",
    )
    assert (written.usd_cents, written.teacher_usd_cents) == (80, 32)
    assert postings_of(settled.id) == {
        (f"user:{student}", LOCKED): (-10, 22, 0),
        (f"user:{student}", AVAILABLE): (2, 22, 0),
        (f"user:{teacher}", AVAILABLE): (8, 8, 0),
    }


def test_withdrawal_hold_settles_to_the_redemption_account(teacher):
    fund(teacher, 50)
    with ledger.atomic():
        held = ledger.hold(teacher, 30, key=key(), kind=EntryKind.WITHDRAWAL_HOLD)
    assert balances(teacher) == (20, 30)
    with ledger.atomic():
        paid = ledger.settle(
            held.id,
            30,
            key=key(),
            to_platform=PlatformAccount.REDEMPTION,
            kind=EntryKind.WITHDRAWAL_PAID,
            reference=("withdrawal", 5),
        )

    assert balances(teacher) == (20, 0)
    assert platform("redemption") == 30
    written = entry(paid.id)
    assert (written.kind, written.tokens) == (EntryKind.WITHDRAWAL_PAID, 30)
    assert (written.usd_cents, written.teacher_usd_cents) == (300, 120)
    assert postings_of(paid.id) == {
        (f"user:{teacher}", LOCKED): (-30, 20, 0),
        ("redemption", AVAILABLE): (30, 30, 0),
    }


def test_release_returns_the_whole_hold_to_available(student):
    fund(student, 30)
    with ledger.atomic():
        held = ledger.hold(student, 10, key=key())
    with ledger.atomic():
        released = ledger.release(held.id, key=key(), reference=("class", 7), memo="Cancelled")

    assert balances(student) == (30, 0)
    written = entry(released.id)
    assert (written.kind, written.tokens, written.memo) == (
        EntryKind.CLASS_RELEASE,
        10,
        "Cancelled",
    )
    assert written.closes_entry_id == held.id
    assert (written.reference_type, written.reference_id) == ("class", 7)
    assert postings_of(released.id) == {
        (f"user:{student}", LOCKED): (-10, 30, 0),
        (f"user:{student}", AVAILABLE): (10, 30, 0),
    }


def test_transfer_moves_tokens_between_users(student, other_student):
    fund(student, 30)
    before = platform_balances()
    with ledger.atomic():
        posted = ledger.transfer(student, other_student, 7, key=key(), memo="For you")

    assert balances(student) == (23, 0)
    assert balances(other_student) == (7, 0)
    assert platform_balances() == before
    written = entry(posted.id)
    assert (written.kind, written.tokens, written.memo) == (EntryKind.GIFT, 7, "For you")
    assert (written.usd_cents, written.teacher_usd_cents) == (70, 28)
    assert postings_of(posted.id) == {
        (f"user:{student}", AVAILABLE): (-7, 23, 0),
        (f"user:{other_student}", AVAILABLE): (7, 7, 0),
    }


def test_every_entry_sums_to_zero(student, teacher, other_student):
    fund(student, 40)
    with ledger.atomic():
        first = ledger.hold(student, 10, key=key())
        second = ledger.hold(student, 10, key=key())
    with ledger.atomic():
        ledger.settle(first.id, 6, key=key(), to_user_id=teacher)
        ledger.release(second.id, key=key())
        ledger.transfer(student, other_student, 5, key=key())
        ledger.debit(teacher, 6, key=key())

    sums = db.session.execute(
        select(Posting.entry_id, func.sum(Posting.amount), func.count()).group_by(Posting.entry_id)
    ).all()
    assert len(sums) == count(JournalEntry) == 7
    assert all(total == 0 and legs >= 2 for _, total, legs in sums)
    assert balances(student) == (29, 0)
    assert (
        sum(platform_balances().values())
        + sum(sum(balances(user)) for user in (student, teacher, other_student))
        == 0
    )


def test_entry_values_are_frozen_at_the_rates_in_force(student):
    with ledger.atomic():
        old = ledger.credit(student, 10, key=key(), now=T0)
    new_prices_from = T0 + timedelta(days=1)
    ledger.publish_pricing("student", 10, 150, 10, effective_at=new_prices_from, backdate=True)
    ledger.publish_pricing("teacher", 10, 50, 10, effective_at=new_prices_from, backdate=True)
    db.session.commit()

    with ledger.atomic():
        before_change = ledger.credit(
            student, 10, key=key(), now=new_prices_from - timedelta(microseconds=1)
        )
        at_change = ledger.credit(student, 10, key=key(), now=new_prices_from)
        after_change = ledger.credit(
            student, 20, key=key(), now=new_prices_from + timedelta(days=9)
        )

    values = {
        posted.id: (entry(posted.id).usd_cents, entry(posted.id).teacher_usd_cents)
        for posted in (old, before_change, at_change, after_change)
    }
    assert values == {
        old.id: (100, 40),
        before_change.id: (100, 40),
        at_change.id: (150, 50),
        after_change.id: (300, 100),
    }


def test_entry_values_round_half_up_at_odd_rates(student):
    """At 3 tokens = 100 cents and 2 tokens = 1 cent the frozen value is rounded half up."""
    ledger.publish_pricing("student", 3, 100, 10, effective_at=T0, backdate=True)
    ledger.publish_pricing("teacher", 2, 1, 10, effective_at=T0, backdate=True)
    db.session.commit()
    expected = {1: (33, 1), 2: (67, 1), 3: (100, 2), 5: (167, 3)}
    with ledger.atomic():
        posted = {tokens: ledger.credit(student, tokens, key=key(), now=T0) for tokens in expected}

    for tokens, (student_cents, teacher_cents) in expected.items():
        written = entry(posted[tokens].id)
        assert (written.usd_cents, written.teacher_usd_cents) == (student_cents, teacher_cents)
        assert written.usd_cents == tokens_value_cents(tokens, "student", at=T0)
        assert written.teacher_usd_cents == tokens_value_cents(tokens, "teacher", at=T0)


def test_the_rate_in_force_is_found_in_utc_whatever_the_zone_of_now(student):
    ledger.publish_pricing("student", 10, 150, 10, effective_at=T0, backdate=True)
    db.session.commit()
    five_hours_east = timezone(timedelta(hours=5))
    just_before = (T0 - timedelta(seconds=1)).astimezone(five_hours_east)
    with ledger.atomic():
        posted = ledger.credit(student, 10, key=key(), now=just_before)
    assert entry(posted.id).usd_cents == 100
    assert entry(posted.id).created_at == T0 - timedelta(seconds=1)


def test_a_refused_operation_rolls_back_the_whole_money_operation(student, other_student):
    fund(student, 10)
    before = snapshot()
    with pytest.raises(ledger.InsufficientTokens), ledger.atomic():
        ledger.credit(student, 5, key=key())
        ledger.transfer(student, other_student, 12, key=key())
        ledger.hold(student, 50, key=key())
    assert snapshot() == before
    assert balances(student) == (10, 0)
    assert balances(other_student) == (0, 0)


def test_repeating_a_credit_returns_the_first_entry_and_moves_nothing(student):
    with ledger.atomic():
        first = ledger.credit(student, 10, key="purchase:7", reference=("purchase", 7))
    with ledger.atomic():
        again = ledger.credit(student, 10, key="purchase:7", reference=("purchase", 7))

    assert again.id == first.id
    assert again.replayed and not first.replayed
    assert (again.kind, again.tokens, again.idempotency_key) == ("purchase", 10, "purchase:7")
    assert balances(student) == (10, 0)
    assert platform("issuance") == -10
    assert count(JournalEntry) == 1
    assert count(Posting) == 2


def test_a_repeat_returns_the_first_outcome_even_once_the_balance_is_spent(student):
    fund(student, 10)
    with ledger.atomic():
        first = ledger.debit(student, 10, key="refund:1")
    assert balances(student) == (0, 0)
    with ledger.atomic():
        again = ledger.debit(student, 10, key="refund:1")
    assert (again.id, again.replayed) == (first.id, True)
    assert balances(student) == (0, 0)
    assert platform("issuance") == 0


def test_same_key_with_different_content_is_refused_and_moves_nothing(student, other_student):
    with ledger.atomic():
        ledger.credit(student, 10, key="purchase:7", reference=("purchase", 7))
    before = snapshot()

    attempts = [
        lambda: ledger.credit(student, 11, key="purchase:7", reference=("purchase", 7)),
        lambda: ledger.credit(other_student, 10, key="purchase:7", reference=("purchase", 7)),
        lambda: ledger.credit(student, 10, key="purchase:7", reference=("purchase", 8)),
        lambda: ledger.credit(student, 10, key="purchase:7", kind=EntryKind.BONUS),
        lambda: ledger.hold(student, 10, key="purchase:7", reference=("purchase", 7)),
    ]
    for attempt in attempts:
        with pytest.raises(ledger.IdempotencyConflict) as refused, ledger.atomic():
            attempt()
        assert refused.value.key == "purchase:7"
        assert "already made with different details" in str(refused.value)

    assert snapshot() == before
    assert balances(student) == (10, 0)
    assert balances(other_student) == (0, 0)


def test_repeating_a_hold_and_a_settle_replays_them(student, teacher):
    fund(student, 30)
    with ledger.atomic():
        held = ledger.hold(student, 10, key="class:1:hold")
    with ledger.atomic():
        held_again = ledger.hold(student, 10, key="class:1:hold")
    assert (held_again.id, held_again.replayed) == (held.id, True)
    assert balances(student) == (20, 10)

    with ledger.atomic():
        settled = ledger.settle(held.id, 8, key="class:1:settle", to_user_id=teacher)
    with ledger.atomic():
        settled_again = ledger.settle(held.id, 8, key="class:1:settle", to_user_id=teacher)
    assert (settled_again.id, settled_again.replayed) == (settled.id, True)
    with pytest.raises(ledger.IdempotencyConflict), ledger.atomic():
        ledger.settle(held.id, 9, key="class:1:settle", to_user_id=teacher)
    assert balances(student) == (22, 0)
    assert balances(teacher) == (8, 0)
    assert count(JournalEntry) == 3


def test_a_settled_hold_cannot_be_settled_or_released_again(student, teacher):
    fund(student, 30)
    with ledger.atomic():
        held = ledger.hold(student, 10, key=key())
    with ledger.atomic():
        ledger.settle(held.id, 10, key="class:1:settle", to_user_id=teacher)
    before = snapshot()

    with pytest.raises(ledger.AlreadySettled) as refused, ledger.atomic():
        ledger.settle(held.id, 10, key="class:1:settle-again", to_user_id=teacher)
    assert refused.value.hold_entry_id == held.id
    with pytest.raises(ledger.AlreadySettled), ledger.atomic():
        ledger.release(held.id, key="class:1:release")

    assert snapshot() == before
    assert balances(student) == (20, 0)
    assert balances(teacher) == (10, 0)


def test_a_released_hold_cannot_be_settled(student, teacher):
    fund(student, 30)
    with ledger.atomic():
        held = ledger.hold(student, 10, key=key())
    with ledger.atomic():
        ledger.release(held.id, key=key())
    before = snapshot()

    with pytest.raises(ledger.AlreadySettled), ledger.atomic():
        ledger.settle(held.id, 5, key=key(), to_user_id=teacher)
    with pytest.raises(ledger.AlreadySettled), ledger.atomic():
        ledger.release(held.id, key=key())

    assert snapshot() == before
    assert balances(student) == (30, 0)
    assert balances(teacher) == (0, 0)


def test_holding_more_than_available_is_refused_with_a_readable_message(student):
    fund(student, 10)
    before = snapshot()

    with pytest.raises(ledger.InsufficientTokens) as refused, ledger.atomic():
        ledger.hold(student, 50, key=key())

    message = str(refused.value)
    assert "needs 50" in message and "10 are available" in message
    assert (refused.value.needed, refused.value.available) == (50, 10)
    assert snapshot() == before
    assert balances(student) == (10, 0)
    assert count(JournalEntry) == 1


def test_transferring_more_than_available_is_refused(student, other_student):
    fund(student, 1)
    before = snapshot()

    with pytest.raises(ledger.InsufficientTokens) as refused, ledger.atomic():
        ledger.transfer(student, other_student, 2, key=key())

    assert "needs 2 and 1 is available" in str(refused.value)
    assert snapshot() == before
    assert balances(student) == (1, 0)
    assert balances(other_student) == (0, 0)


def test_debiting_more_than_available_is_refused(student):
    fund(student, 5)
    before = snapshot()

    refusal = "needs 6 and 5 are available"
    with pytest.raises(ledger.InsufficientTokens, match=refusal), ledger.atomic():
        ledger.debit(student, 6, key=key())

    assert snapshot() == before
    assert platform("issuance") == -5


def test_held_tokens_cannot_be_spent_twice(student, other_student):
    fund(student, 10)
    with ledger.atomic():
        ledger.hold(student, 8, key=key())
    before = snapshot()

    refusal = "needs 5 and 2 are available"
    with pytest.raises(ledger.InsufficientTokens, match=refusal), ledger.atomic():
        ledger.transfer(student, other_student, 5, key=key())

    assert snapshot() == before
    assert balances(student) == (2, 8)


def test_a_platform_account_that_is_not_a_source_cannot_go_negative(student):
    before = snapshot()
    # A debit from a sink names its shard (any other might hold too few tokens) ...
    with pytest.raises(ledger.InvalidPosting, match="names the shard"), ledger.atomic():
        ledger.credit(student, 5, key=key(), source=PlatformAccount.FEES)
    # ... and one that does is refused when that shard would go negative.
    legs = [
        Leg(platform_account(PlatformAccount.FEES, 3), AVAILABLE, -5),
        Leg(user_account(student), AVAILABLE, 5),
    ]
    with pytest.raises(ledger.InsufficientTokens), ledger.atomic():
        post(EntryKind.ADJUSTMENT, key(), legs, tokens=5)
    assert snapshot() == before
    assert platform("fees") == 0


def posting_wallet(entry_id: int, code: str) -> int:
    """The wallet (which shard of `code`) the entry posted to."""
    return db.session.scalar(
        select(Wallet.id)
        .join(Posting, Posting.wallet_id == Wallet.id)
        .where(Posting.entry_id == entry_id, Wallet.code == code)
    )


def test_amounts_must_be_positive_whole_numbers(student, other_student):
    fund(student, 20)
    before = snapshot()
    operations = [
        lambda amount: ledger.credit(student, amount, key=key()),
        lambda amount: ledger.debit(student, amount, key=key()),
        lambda amount: ledger.hold(student, amount, key=key()),
        lambda amount: ledger.transfer(student, other_student, amount, key=key()),
    ]
    for operation in operations:
        for amount in (0, -5, True, 1.5, 10.0, "10", None):
            with pytest.raises(ledger.InvalidPosting, match="positive whole"), ledger.atomic():
                operation(amount)
    assert snapshot() == before


def test_a_settle_charges_between_one_and_the_amount_held(student, teacher):
    fund(student, 30)
    with ledger.atomic():
        held = ledger.hold(student, 10, key=key())
    before = snapshot()

    for charge in (0, -1, 11, True, 2.5):
        with pytest.raises(ledger.InvalidPosting, match="charges 1 to 10"), ledger.atomic():
            ledger.settle(held.id, charge, key=key(), to_user_id=teacher)

    assert snapshot() == before
    with ledger.atomic():
        ledger.settle(held.id, 10, key=key(), to_user_id=teacher)
    assert balances(teacher) == (10, 0)


def test_a_hold_is_not_settled_to_its_own_wallet(student):
    fund(student, 30)
    with ledger.atomic():
        held = ledger.hold(student, 10, key=key())
    before = snapshot()
    with pytest.raises(ledger.InvalidPosting, match="own wallet"), ledger.atomic():
        ledger.settle(held.id, 10, key=key(), to_user_id=student)
    assert snapshot() == before


def test_a_settle_pays_exactly_one_payee(student, teacher):
    fund(student, 30)
    with ledger.atomic():
        held = ledger.hold(student, 10, key=key())
    before = snapshot()
    with pytest.raises(ledger.InvalidPosting), ledger.atomic():
        ledger.settle(held.id, 10, key=key())
    with pytest.raises(ledger.InvalidPosting), ledger.atomic():
        ledger.settle(held.id, 10, key=key(), to_user_id=teacher, to_platform=PlatformAccount.FEES)
    assert snapshot() == before


def test_only_a_hold_can_be_settled_or_released(student, teacher):
    funded = fund(student, 30)
    before = snapshot()
    with pytest.raises(ledger.InvalidPosting, match="not a hold"), ledger.atomic():
        ledger.settle(funded.id, 10, key=key(), to_user_id=teacher)
    with pytest.raises(ledger.InvalidPosting, match="not a hold"), ledger.atomic():
        ledger.release(funded.id, key=key())
    with pytest.raises(ledger.InvalidPosting, match="not a hold"), ledger.atomic():
        ledger.release(999_999, key=key())
    assert snapshot() == before


def test_a_transfer_to_oneself_is_refused(student):
    fund(student, 30)
    before = snapshot()
    with pytest.raises(ledger.InvalidPosting, match="another wallet"), ledger.atomic():
        ledger.transfer(student, student, 5, key=key())
    assert snapshot() == before


def test_a_hold_refuses_a_kind_that_is_not_a_hold(student):
    fund(student, 30)
    before = snapshot()
    for kind in (EntryKind.PURCHASE, EntryKind.CLASS_SETTLE, EntryKind.GIFT, "withdrawal"):
        with pytest.raises(ledger.InvalidPosting, match="not a kind of hold"), ledger.atomic():
            ledger.hold(student, 5, key=key(), kind=kind)
    assert snapshot() == before


def test_posting_to_a_user_without_a_wallet_moves_nothing(student):
    before = snapshot()
    with pytest.raises(ledger.InvalidPosting, match="no wallet for user:999"), ledger.atomic():
        ledger.credit(999, 5, key=key())
    assert snapshot() == before
    assert platform("issuance") == 0


def _legs(student: int, *amounts) -> list[Leg]:
    """Legs on issuance, then the student's available, then the student's locked bucket."""
    buckets = [(platform_account("issuance"), AVAILABLE), (user_account(student), AVAILABLE)]
    buckets.append((user_account(student), LOCKED))
    return [
        Leg(account, bucket, amount)
        for (account, bucket), amount in zip(buckets[: len(amounts)], amounts, strict=True)
    ]


INVALID_ENTRIES = [
    ((-10, 9), 10, "k", "sum to zero"),
    ((-10, 10, 1), 10, "k", "sum to zero"),
    ((-10,), 10, "k", "two or more"),
    ((0, 0), 0, "k", "non-zero"),
    ((-1.5, 1.5), 1, "k", "whole, non-zero"),
    ((-1, True), 1, "k", "whole, non-zero"),
    ((-10, 10), -10, "k", "not negative"),
    ((-10, 10), 10.0, "k", "not negative"),
    ((-10, 10), 10, "", "idempotency key"),
    ((-10, 10), 10, "k" * 201, "idempotency key"),
]


def test_post_refuses_an_invalid_entry(student):
    before = snapshot()
    for amounts, tokens, entry_key, message in INVALID_ENTRIES:
        with pytest.raises(ledger.InvalidPosting, match=message), ledger.atomic():
            post(EntryKind.ADJUSTMENT, entry_key, _legs(student, *amounts), tokens=tokens)
    assert snapshot() == before


def test_post_refuses_two_postings_to_the_same_bucket(student):
    legs = [
        Leg(platform_account("issuance"), AVAILABLE, -10),
        Leg(user_account(student), AVAILABLE, 4),
        Leg(user_account(student), AVAILABLE, 6),
    ]
    with pytest.raises(ledger.InvalidPosting, match="once to each bucket"), ledger.atomic():
        post(EntryKind.ADJUSTMENT, key(), legs, tokens=10)
    assert count(JournalEntry) == 0


def test_post_writes_a_balanced_adjustment_of_several_legs(student):
    fund(student, 20)
    legs = [
        Leg(user_account(student), AVAILABLE, -5),
        Leg(user_account(student), LOCKED, 2),
        Leg(platform_account("fees"), AVAILABLE, 3),
    ]
    with ledger.atomic():
        posted = post(EntryKind.ADJUSTMENT, key(), legs, tokens=5, memo="m" * 600)

    assert balances(student) == (15, 2)
    assert platform("fees") == 3
    assert entry(posted.id).memo == "m" * 500
    assert postings_of(posted.id) == {
        ("fees", AVAILABLE): (3, 3, 0),
        (f"user:{student}", AVAILABLE): (-5, 15, 2),
        (f"user:{student}", LOCKED): (2, 15, 2),
    }


def test_entries_and_postings_are_append_only(student, teacher):
    """The triggers abort (SQLite: SQLITE_CONSTRAINT, PostgreSQL: restrict_violation), which
    SQLAlchemy raises as IntegrityError."""
    fund(student, 30)
    with ledger.atomic():
        held = ledger.hold(student, 10, key=key())
    with ledger.atomic():
        ledger.settle(held.id, 4, key=key(), to_user_id=teacher)
    before = snapshot()

    for statement, refusal in [
        ("UPDATE journal_entries SET tokens = 999", "journal_entries is append-only: UPDATE"),
        ("UPDATE journal_entries SET memo = 'x' WHERE id = 1", "journal_entries is append-only"),
        ("DELETE FROM journal_entries", "journal_entries is append-only: DELETE"),
        ("UPDATE postings SET amount = amount + 1", "postings is append-only: UPDATE"),
        ("DELETE FROM postings", "postings is append-only: DELETE"),
        ("DELETE FROM postings WHERE id = 1", "postings is append-only: DELETE"),
    ]:
        with pytest.raises(IntegrityError, match=refusal):
            db.session.execute(text(statement))
        db.session.rollback()
        assert snapshot() == before


def test_the_database_refuses_a_negative_user_balance(student):
    fund(student, 3)
    refusal = "CHECK constraint failed|violates check constraint"  # SQLite's | PostgreSQL's
    with pytest.raises(IntegrityError, match=refusal):
        db.session.execute(
            text("UPDATE wallets SET available = available - 4 WHERE user_id = :id"),
            {"id": student},
        )
    db.session.rollback()
    assert balances(student) == (3, 0)
