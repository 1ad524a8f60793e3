"""Versioned token pricing, conversions with explicit rounding, and class cost."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from soma.extensions import db
from soma.ledger.pricing import (
    PricingMissing,
    cents_to_tokens,
    class_cost,
    get_token_pricing,
    publish_pricing,
    tokens_to_cents,
    tokens_value_cents,
)
from soma.models import TokenPricing

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
JUST_BEFORE = timedelta(microseconds=1)


def pricing_rows() -> list:
    return db.session.execute(text("SELECT * FROM token_pricing ORDER BY id")).all()


def test_student_pricing_defaults_to_ten_tokens_for_a_dollar(ctx):
    pricing = get_token_pricing("student")
    assert (pricing.user_type, pricing.version) == ("student", 1)
    assert (pricing.tokens, pricing.usd_cents, pricing.class_tokens_per_hour) == (10, 100, 10)
    assert pricing.effective_at == EPOCH


def test_teacher_pricing_defaults_to_ten_tokens_for_forty_cents(ctx):
    pricing = get_token_pricing("teacher")
    assert (pricing.user_type, pricing.version) == ("teacher", 1)
    assert (pricing.tokens, pricing.usd_cents, pricing.class_tokens_per_hour) == (10, 40, 10)
    assert pricing.effective_at == EPOCH


def test_pricing_is_only_for_students_and_teachers(ctx):
    with pytest.raises(ValueError, match="admin"):
        get_token_pricing("admin")


def test_a_new_price_is_a_new_version_from_its_effective_time(ctx):
    v1_before = pricing_rows()
    published = publish_pricing("student", 10, 120, 12, effective_at=T0, backdate=True)
    db.session.commit()

    assert (published.version, published.tokens, published.usd_cents) == (2, 10, 120)
    assert get_token_pricing("student", at=T0 - JUST_BEFORE).version == 1
    assert get_token_pricing("student", at=T0).version == 2
    assert get_token_pricing("student", at=T0 + timedelta(days=400)).version == 2
    assert get_token_pricing("teacher", at=T0).version == 1
    assert pricing_rows()[: len(v1_before)] == v1_before


def test_a_price_published_for_tomorrow_is_not_in_force_today(ctx):
    publish_pricing("student", 10, 120, 10, effective_at=datetime.now(UTC) + timedelta(days=1))
    db.session.commit()
    assert get_token_pricing("student").version == 1
    assert tokens_value_cents(10, "student") == 100


def test_the_time_asked_is_compared_in_utc(ctx):
    publish_pricing("student", 10, 120, 12, effective_at=T0, backdate=True)
    db.session.commit()
    five_hours_east = timezone(timedelta(hours=5))
    assert get_token_pricing("student", at=T0.astimezone(five_hours_east)).version == 2
    assert (
        get_token_pricing("student", at=(T0 - JUST_BEFORE).astimezone(five_hours_east)).version == 1
    )


def test_versions_count_per_user_type(ctx):
    assert publish_pricing("teacher", 10, 50, 10, effective_at=T0, backdate=True).version == 2
    assert publish_pricing("student", 10, 110, 10, effective_at=T0, backdate=True).version == 2
    assert (
        publish_pricing(
            "student", 10, 130, 10, effective_at=T0 + timedelta(days=1), backdate=True
        ).version
        == 3
    )
    db.session.commit()

    versions = db.session.execute(
        select(TokenPricing.user_type, TokenPricing.version).order_by(TokenPricing.id)
    ).all()
    assert versions == [
        ("student", 1),
        ("teacher", 1),
        ("teacher", 2),
        ("student", 2),
        ("student", 3),
    ]
    assert get_token_pricing("student", at=T0 + timedelta(hours=1)).usd_cents == 110
    assert publish_pricing("student", 10, 120, 10, effective_at=T0, backdate=True).version == 4
    db.session.commit()
    assert get_token_pricing("student", at=T0).usd_cents == 120, "the newer version wins a tie"
    assert get_token_pricing("student", at=T0 + timedelta(days=2)).usd_cents == 130


def test_pricing_rows_are_never_edited(ctx):
    before = pricing_rows()
    for statement in (
        "UPDATE token_pricing SET usd_cents = 1",
        "DELETE FROM token_pricing WHERE version = 1",
    ):
        with pytest.raises(IntegrityError, match="token_pricing is append-only"):
            db.session.execute(text(statement))
        db.session.rollback()
    assert pricing_rows() == before


def test_no_pricing_is_in_force_before_1970(ctx):
    before = EPOCH - JUST_BEFORE
    assert get_token_pricing("student", at=EPOCH).version == 1
    with pytest.raises(PricingMissing, match="no student pricing"):
        get_token_pricing("student", at=before)
    with pytest.raises(PricingMissing, match="no teacher pricing"):
        tokens_value_cents(10, "teacher", at=before)
    with pytest.raises(PricingMissing):
        class_cost(60, at=before)
    assert issubclass(PricingMissing, LookupError)


@pytest.mark.parametrize(
    ("user_type", "tokens", "cents"),
    [
        ("student", 0, 0),
        ("student", 1, 10),
        ("student", 10, 100),
        ("student", 15, 150),
        ("teacher", 1, 4),
        ("teacher", 10, 40),
        ("teacher", 15, 60),
        ("teacher", 1000, 4000),
    ],
)
def test_tokens_to_cents_at_the_default_rates(ctx, user_type, tokens, cents):
    assert tokens_to_cents(tokens, get_token_pricing(user_type)) == cents
    assert tokens_value_cents(tokens, user_type) == cents


@pytest.mark.parametrize(
    ("user_type", "cents", "tokens"),
    [
        ("student", 100, 10),
        ("student", 10, 1),
        ("student", 5, 1),
        ("student", 11, 2),
        ("teacher", 40, 10),
        ("teacher", 60, 15),
        ("teacher", 5, 2),
    ],
)
def test_cents_to_tokens_rounds_up_by_default(ctx, user_type, cents, tokens):
    assert cents_to_tokens(cents, get_token_pricing(user_type)) == tokens


@pytest.fixture
def three_for_a_dollar(ctx) -> TokenPricing:
    """Student pricing of 3 tokens = 100 cents, where every conversion needs rounding."""
    publish_pricing("student", 3, 100, 10, effective_at=T0, backdate=True)
    db.session.commit()
    return get_token_pricing("student", at=T0)


@pytest.mark.parametrize(
    ("tokens", "rounding", "cents"),
    [
        (1, "half_up", 33),
        (1, "up", 34),
        (1, "down", 33),
        (2, "half_up", 67),
        (2, "up", 67),
        (2, "down", 66),
        (3, "half_up", 100),
        (3, "up", 100),
        (3, "down", 100),
    ],
)
def test_tokens_to_cents_rounds_as_asked(three_for_a_dollar, tokens, rounding, cents):
    assert tokens_to_cents(tokens, three_for_a_dollar, rounding) == cents
    assert tokens_value_cents(tokens, "student", at=T0, rounding=rounding) == cents


@pytest.mark.parametrize(
    ("cents", "rounding", "tokens"),
    [
        (50, "half_up", 2),
        (50, "up", 2),
        (50, "down", 1),
        (40, "half_up", 1),
        (40, "up", 2),
        (40, "down", 1),
        (10, "half_up", 0),
        (10, "up", 1),
        (10, "down", 0),
        (100, "half_up", 3),
        (100, "up", 3),
        (100, "down", 3),
    ],
)
def test_cents_to_tokens_rounds_as_asked(three_for_a_dollar, cents, rounding, tokens):
    assert cents_to_tokens(cents, three_for_a_dollar, rounding) == tokens


def test_conversion_defaults_are_half_up_for_cents_and_up_for_tokens(three_for_a_dollar):
    assert tokens_to_cents(1, three_for_a_dollar) == 33
    assert tokens_to_cents(2, three_for_a_dollar) == 67
    assert cents_to_tokens(40, three_for_a_dollar) == 2
    assert cents_to_tokens(10, three_for_a_dollar) == 1


def test_half_a_cent_rounds_up_only_when_asked(ctx):
    publish_pricing("teacher", 2, 1, 10, effective_at=T0, backdate=True)
    db.session.commit()
    half_cent = get_token_pricing("teacher", at=T0)
    assert [tokens_to_cents(1, half_cent, rounding) for rounding in ("half_up", "up", "down")] == [
        1,
        1,
        0,
    ]
    assert [tokens_to_cents(3, half_cent, rounding) for rounding in ("half_up", "up", "down")] == [
        2,
        2,
        1,
    ]


def test_values_follow_the_pricing_in_force(ctx):
    publish_pricing("teacher", 10, 50, 10, effective_at=T0, backdate=True)
    db.session.commit()
    assert tokens_value_cents(15, "teacher", at=T0 - JUST_BEFORE) == 60
    assert tokens_value_cents(15, "teacher", at=T0) == 75
    assert tokens_value_cents(15, "student", at=T0) == 150


@pytest.mark.parametrize(
    ("minutes", "tokens"),
    [(60, 10), (30, 5), (45, 8), (1, 1), (6, 1), (7, 2), (61, 11), (90, 15), (120, 20)],
)
def test_class_cost_is_the_ceiling_of_minutes_at_ten_tokens_an_hour(ctx, minutes, tokens):
    assert class_cost(minutes) == tokens


@pytest.mark.parametrize("minutes", [0, -30, 1.5, 60.0, True, "60", None])
def test_class_cost_needs_a_positive_whole_number_of_minutes(ctx, minutes):
    with pytest.raises(ValueError, match="positive whole number of minutes"):
        class_cost(minutes)


def test_class_cost_follows_the_class_rate_in_force(ctx):
    publish_pricing("student", 10, 100, 12, effective_at=T0, backdate=True)
    db.session.commit()
    assert class_cost(30, at=T0 - JUST_BEFORE) == 5
    assert class_cost(30, at=T0) == 6
    assert class_cost(45, at=T0) == 9
    assert class_cost(50, at=T0) == 10
    assert class_cost(51, at=T0) == 11


def test_a_rate_of_more_than_a_billion_tokens_values_entries_as_python_does(ctx):
    """A version's `tokens` is a 32-bit column; the value's rounding doubles it
    ((tokens x cents x 2 + rate) / (rate x 2)), which must not overflow 32 bits on
    PostgreSQL: an entry posted through the ledger and a purchase's credit (its own
    statement on PostgreSQL) both take the value Python computes, and the audit agrees."""
    from soma import ledger
    from soma.audit import run_audit
    from soma.models import JournalEntry
    from soma.purchases import service
    from tests.builders import make_user
    from tests.buying import sandbox_purchase

    rate = 2**30 + 3  # odd: every value below has a half cent
    publish_pricing("student", rate, 2**31 + 5, 10, effective_at=T0, backdate=True)
    publish_pricing("teacher", rate, 2**30 + 7, 10, effective_at=T0, backdate=True)
    db.session.commit()
    student = make_user("student")
    db.session.commit()
    with ledger.atomic():
        posted = ledger.credit(student.id, 1001, key="big-rate")
    purchase_id = sandbox_purchase(student, 250, True, "big-rate-purchase")
    service.fulfil(purchase_id, "sandbox", receipt="SANDBOX-big-rate")
    entries = db.session.execute(
        select(JournalEntry.tokens, JournalEntry.usd_cents, JournalEntry.teacher_usd_cents)
        .where(JournalEntry.id >= posted.id)
        .order_by(JournalEntry.id)
    ).all()
    student_rate, teacher_rate = get_token_pricing("student"), get_token_pricing("teacher")
    assert [e.tokens for e in entries] == [1001, 250, 10]
    assert [(e.usd_cents, e.teacher_usd_cents) for e in entries] == [
        (tokens_to_cents(e.tokens, student_rate), tokens_to_cents(e.tokens, teacher_rate))
        for e in entries
    ]
    assert entries[0].usd_cents == 2002  # 1001 x (2**31 + 5) / (2**30 + 3) = 2001.99...
    assert run_audit() == []
