"""The teacher's earnings dashboard: what classes paid them, at the values the ledger froze
when it paid them, by month, with growth, classes and hours; the chart and its table; who
may see it; and the checkpoint that keeps it fast, which must never change a figure."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, event, func, select, update

from soma import ledger
from soma.audit import Violation, audit, run_audit
from soma.classes import service as class_service
from soma.classes.machine import Action
from soma.earnings import service
from soma.earnings.chart import bar_chart, scale_top, short_usd
from soma.earnings.service import Growth, Totals, add_months, earnings_of, month_start
from soma.extensions import db
from soma.models import (
    EarningsCheckpoint,
    EarningsDay,
    EarningsMonth,
    Posting,
    User,
    Wallet,
)
from tests.builders import fund, make_class, make_funded_user, make_user
from tests.helpers import text_of

SEPT = datetime(2026, 9, 10, 9, 0, tzinfo=UTC)
OCT = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
NOV = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def publish_teacher_rate(cents_per_ten: int, effective_at: datetime) -> None:
    with ledger.atomic():
        ledger.publish_pricing("teacher", 10, cents_per_ten, 10, effective_at, backdate=True)


def month(earnings, key: str) -> Totals:
    (found,) = [m.totals for m in earnings.months if f"{m.start:%Y-%m}" == key]
    return found


def wallet_id_of(user_id: int) -> int:
    return db.session.scalar(select(Wallet.id).where(Wallet.user_id == user_id))


@pytest.fixture
def three_rates(ctx, clock):
    """A teacher paid in September at 4 c a token, in October at 5 c (a completed hour and
    an ended-early half hour), and in November at 6 c; it is now 24 November."""
    teacher = make_user("teacher", email="tess@example.com", name="Tess Teacher")
    student = make_user("student")
    # Funded before the rates change, as it would have been: an entry's value is frozen
    # at the rate in force at its own time.
    fund(student.id, 200, now=SEPT - timedelta(days=1))
    clock.now = SEPT
    make_class(student, teacher, "completed")  # 60 minutes, 10 tokens
    publish_teacher_rate(50, datetime(2026, 10, 1, tzinfo=UTC))
    clock.now = OCT
    make_class(student, teacher, "completed")  # 10 tokens
    clock.now = OCT + timedelta(days=1)
    make_class(student, teacher, "ended_early", minutes=30)  # 10 of 30 minutes: 2 of 5
    publish_teacher_rate(60, datetime(2026, 11, 10, tzinfo=UTC))
    clock.now = NOV
    make_class(student, teacher, "completed", minutes=45)  # 8 tokens
    clock.now = NOW
    return teacher


def test_each_month_is_what_its_classes_paid_at_the_rate_frozen_then(three_rates):
    earnings = earnings_of(three_rates)

    assert [f"{m.start:%Y-%m}" for m in earnings.months] == [
        f"{add_months(datetime(2025, 12, 1, tzinfo=UTC), i):%Y-%m}" for i in range(12)
    ]
    assert month(earnings, "2026-09") == Totals(classes=1, seconds=3600, tokens=10, cents=40)
    assert month(earnings, "2026-10") == Totals(classes=2, seconds=4200, tokens=12, cents=60)
    assert month(earnings, "2026-11") == Totals(classes=1, seconds=2700, tokens=8, cents=48)
    assert earnings.this_month.totals.cents == 48
    assert earnings.last_month.totals.cents == 60
    # 30 tokens at today's 6 c would be $1.80: the lifetime is what was paid, $1.48.
    assert earnings.lifetime == Totals(classes=4, seconds=10500, tokens=30, cents=148)
    assert earnings.year == earnings.lifetime
    # The balance is not earnings: it is valued at today's rate, what a withdrawal pays.
    assert (earnings.available, earnings.locked) == (30, 0)
    assert earnings.available_cents == 180


def test_a_new_rate_changes_the_balance_value_but_no_earned_figure(three_rates):
    before = earnings_of(three_rates)
    publish_teacher_rate(100, NOW - timedelta(hours=1))

    after = earnings_of(three_rates)

    assert after.months == before.months
    assert after.lifetime == before.lifetime
    assert after.growth == before.growth
    assert (before.available_cents, after.available_cents) == (180, 300)


def test_only_settles_that_paid_the_teacher_count_as_classes_and_hours(ctx, clock):
    teacher = make_user("teacher")
    student = make_funded_user(100)
    clock.now = datetime(2026, 11, 2, 9, tzinfo=UTC)
    make_class(student, teacher, "completed")  # 3600 s, 10 tokens
    clock.now = datetime(2026, 11, 3, 9, tzinfo=UTC)
    make_class(student, teacher, "ended_early")  # 600 s of 3600: 2 tokens
    clock.now = datetime(2026, 11, 4, 9, tzinfo=UTC)
    aborted = make_class(student, teacher, "in_progress")
    class_service.act(aborted, Action.ABORT, teacher, now=clock.now + timedelta(minutes=20))
    clock.now = datetime(2026, 11, 5, 9, tzinfo=UTC)
    make_class(student, teacher, "cancelled")
    make_class(student, teacher, "in_progress", now=datetime(2026, 11, 6, 9, tzinfo=UTC))
    clock.now = datetime(2026, 11, 6, 9, 30, tzinfo=UTC)

    earnings = earnings_of(teacher)

    assert earnings.lifetime == Totals(classes=2, seconds=4200, tokens=12, cents=48)
    assert str(earnings.lifetime.hours) == "1.2"
    assert earnings.this_month.totals == earnings.lifetime
    assert (earnings.available, earnings.locked) == (12, 0)  # the live class holds the student's


def test_growth_compares_this_month_so_far_with_last_month_up_to_the_same_point(ctx, clock):
    teacher = make_user("teacher")
    student = make_funded_user(100)
    for day in (2, 20):  # October: the 2nd is before the same point (the 24th), the 20th too
        clock.now = datetime(2026, 10, day, 9, tzinfo=UTC)
        make_class(student, teacher, "completed")
    clock.now = datetime(2026, 10, 28, 9, tzinfo=UTC)  # after it
    make_class(student, teacher, "completed")
    clock.now = datetime(2026, 11, 3, 9, tzinfo=UTC)
    make_class(student, teacher, "completed", minutes=90)  # 15 tokens
    clock.now = NOW

    earnings = earnings_of(teacher)

    assert earnings.last_month.totals.cents == 120
    assert earnings.growth == Growth(60, 80, datetime(2026, 10, 24, 9, 0, tzinfo=UTC))
    assert (earnings.growth.percent, earnings.growth.text) == (-25, "-25%")
    assert earnings.growth.direction == "down"


def test_growth_at_a_months_end_compares_with_all_of_a_shorter_last_month(ctx, clock):
    teacher = make_user("teacher")
    student = make_funded_user(100)
    clock.now = datetime(2027, 2, 27, 9, tzinfo=UTC)
    make_class(student, teacher, "completed")
    clock.now = datetime(2027, 3, 30, 9, tzinfo=UTC)
    make_class(student, teacher, "completed", minutes=30)
    clock.now = datetime(2027, 3, 31, 12, tzinfo=UTC)

    growth = earnings_of(teacher).growth

    assert growth.before_until == datetime(2027, 3, 1, tzinfo=UTC)
    assert (growth.now_cents, growth.before_cents, growth.text) == (20, 40, "-50%")


@pytest.mark.parametrize(
    "now_cents,before_cents,percent,text,direction",
    [
        (0, 0, None, "\N{EM DASH}", "flat"),
        (500, 0, None, "new", "up"),
        (150, 100, 50, "+50%", "up"),
        (100, 100, 0, "0%", "flat"),
        (0, 100, -100, "-100%", "down"),
        (1, 3, -67, "-67%", "down"),
        (2, 3, -33, "-33%", "down"),
        (100_001, 1, 10_000_000, "+10,000,000%", "up"),
    ],
)
def test_growth_when_last_month_had_nothing_or_something(
    now_cents, before_cents, percent, text, direction
):
    growth = Growth(now_cents, before_cents, NOW)
    assert (growth.percent, growth.text, growth.direction) == (percent, text, direction)


def test_growth_with_nothing_last_month_reads_new_on_the_page(client, auth, app, clock):
    with app.app_context():
        teacher = make_user("teacher", email="nina@example.com")
        clock.now = datetime(2026, 11, 2, 9, tzinfo=UTC)
        make_class(make_funded_user(20), teacher, "completed")
        clock.now = NOW
    auth.login("nina@example.com")
    page = text_of(client.get("/earnings").get_data(as_text=True))
    assert "Growth new nothing was paid by this point last month (24 Oct 2026, 09:00 UTC)" in page


def test_months_and_their_bounds_are_utc_calendar_months():
    assert month_start(datetime(2026, 3, 31, 23, 59, tzinfo=UTC)) == datetime(
        2026, 3, 1, tzinfo=UTC
    )
    assert add_months(datetime(2026, 1, 1, tzinfo=UTC), -1) == datetime(2025, 12, 1, tzinfo=UTC)
    assert add_months(datetime(2025, 12, 1, tzinfo=UTC), 1) == datetime(2026, 1, 1, tzinfo=UTC)
    assert add_months(datetime(2026, 11, 1, tzinfo=UTC), -11) == datetime(2025, 12, 1, tzinfo=UTC)


def test_a_new_teacher_sees_twelve_empty_months(ctx, clock):
    teacher = make_user("teacher")
    earnings = earnings_of(teacher)
    assert len(earnings.months) == 12
    assert all(m.totals == Totals() for m in earnings.months)
    assert earnings.lifetime == Totals()
    assert earnings.growth.text == "\N{EM DASH}"
    assert earnings.withdrawn_tokens == 0


def test_paid_withdrawals_are_read_from_the_ledger(three_rates):
    """There is no withdrawal table yet: what left the wallet is the ledger's to say."""
    held = ledger.hold(three_rates.id, 25, key="w:1", kind="withdrawal_hold")
    ledger.settle(held.id, 25, key="w:1:paid", to_platform="redemption", kind="withdrawal_paid")
    db.session.commit()
    earnings = earnings_of(three_rates)
    assert earnings.withdrawn_tokens == 25
    assert (earnings.available, earnings.locked) == (5, 0)
    assert earnings.lifetime.tokens == 30  # what was earned does not change


def test_the_page_asks_the_same_few_queries_however_many_classes(ctx, clock):
    """Aggregates in the database: no query per month, none per class."""
    small, large = make_user("teacher"), make_user("teacher")
    student = make_funded_user(500)
    make_class(student, small, "completed", now=datetime(2026, 11, 1, 9, tzinfo=UTC))
    for day in range(1, 21):
        clock.now = datetime(2026, 3, 1, 9, tzinfo=UTC) + timedelta(days=day * 12)
        make_class(student, large, "completed", minutes=30)
    clock.now = NOW
    sent = []

    def count(*args):
        sent.append(args[2])

    counts = []
    for teacher in (small, large):
        sent.clear()
        event.listen(db.engine, "before_cursor_execute", count)
        earnings_of(teacher)
        event.remove(db.engine, "before_cursor_execute", count)
        counts.append(len(sent))
    assert counts[0] == counts[1] <= 7


# The checkpoint ----------------------------------------------------------------------


def figures(earnings) -> tuple:
    return (earnings.months, earnings.lifetime, earnings.growth, earnings.withdrawn_tokens)


def checkpointed_months(wallet_id: int) -> list:
    """(month, classes, cents) of the wallet's checkpointed months, in order."""
    return db.session.execute(
        select(EarningsMonth.month, EarningsMonth.classes, EarningsMonth.cents)
        .where(EarningsMonth.wallet_id == wallet_id)
        .order_by(EarningsMonth.month)
    ).all()


def reset_checkpoint(wallet_id: int) -> None:
    db.session.execute(delete(EarningsDay).where(EarningsDay.wallet_id == wallet_id))
    db.session.execute(delete(EarningsMonth).where(EarningsMonth.wallet_id == wallet_id))
    db.session.execute(delete(EarningsCheckpoint).where(EarningsCheckpoint.wallet_id == wallet_id))
    db.session.commit()


def test_the_figures_are_the_same_wherever_the_checkpoint_stands(three_rates, clock):
    teacher = three_rates
    wallet_id = wallet_id_of(teacher.id)
    expected = figures(earnings_of(teacher))
    seqs = db.session.scalars(select(Posting.seq).where(Posting.wallet_id == wallet_id)).all()
    assert len(seqs) == 4
    for upto in [0, *seqs]:
        reset_checkpoint(wallet_id)
        service.advance_checkpoint(wallet_id, upto=upto)
        earnings = earnings_of(teacher)
        assert figures(earnings) == expected, upto
        assert earnings.tail_payments == len([s for s in seqs if s > upto])
        assert run_audit() == []
    assert checkpointed_months(wallet_id) == [
        ("2026-09", 1, 40),
        ("2026-10", 2, 60),
        ("2026-11", 1, 48),
    ]


def days_of(wallet_id: int) -> list:
    """The wallet's earnings day rows, (day, cents), in day order."""
    return db.session.execute(
        select(EarningsDay.day, EarningsDay.cents)
        .where(EarningsDay.wallet_id == wallet_id)
        .order_by(EarningsDay.day)
    ).all()


def test_last_month_up_to_the_same_point_is_the_same_wherever_the_checkpoint_stands(ctx, clock):
    """The same point's figure adds the checkpointed whole days (EarningsDay), the tail's
    payments in those days and the payments of the same point's own day up to it: each
    payment once, wherever the checkpoint stands, and none after the same point."""
    teacher = make_user("teacher")
    student = make_funded_user(100)
    # October (4 c a token, 40 c a class): the 2nd and the 20th are whole days before
    # the same point (24 October 09:00), 02:00 on the 24th is before it on its own day,
    # 15:00 on the 24th and the 28th are after it.
    for when in (
        datetime(2026, 10, 2, 9, tzinfo=UTC),
        datetime(2026, 10, 20, 9, tzinfo=UTC),
        datetime(2026, 10, 24, 2, tzinfo=UTC),
        datetime(2026, 10, 24, 15, tzinfo=UTC),
        datetime(2026, 10, 28, 9, tzinfo=UTC),
    ):
        clock.now = when
        make_class(student, teacher, "completed")
    clock.now = datetime(2026, 11, 3, 9, tzinfo=UTC)
    make_class(student, teacher, "completed", minutes=90)  # 15 tokens: 60 c
    clock.now = NOW
    wallet_id = wallet_id_of(teacher.id)
    paid = db.session.execute(
        select(Posting.seq, Posting.created_at)
        .where(Posting.wallet_id == wallet_id, Posting.amount > 0)
        .order_by(Posting.seq)
    ).all()
    assert [f"{at:%m-%d}" for _, at in paid] == [
        "10-02",
        "10-20",
        "10-24",
        "10-24",
        "10-28",
        "11-03",
    ]
    assert paid[2][1] < datetime(2026, 10, 24, 9, tzinfo=UTC) < paid[3][1]

    for upto in [0, *(seq for seq, _ in paid)]:
        reset_checkpoint(wallet_id)
        service.advance_checkpoint(wallet_id, upto=upto)
        earnings = earnings_of(teacher)
        assert earnings.growth == Growth(60, 120, datetime(2026, 10, 24, 9, tzinfo=UTC)), upto
        assert (earnings.growth.text, earnings.last_month.totals.cents) == ("-50%", 200), upto
        assert run_audit() == []
    days = days_of(wallet_id)
    assert days == [
        ("2026-10-02", 40),
        ("2026-10-20", 40),
        ("2026-10-24", 80),
        ("2026-10-28", 40),
        ("2026-11-03", 60),
    ]


def test_a_checkpoint_moves_on_by_adding_only_the_payments_after_it(three_rates, clock):
    teacher = three_rates
    wallet_id = wallet_id_of(teacher.id)
    assert service.advance_checkpoint(wallet_id) == 3  # three months written
    assert service.advance_checkpoint(wallet_id) == 0  # nothing new
    student = make_funded_user(50)
    clock.now = NOW + timedelta(hours=1)
    make_class(student, teacher, "completed")  # November again, at 6 c: 60 c
    clock.now = NOW + timedelta(hours=3)
    assert earnings_of(teacher).tail_payments == 1

    assert service.advance_checkpoint(wallet_id) == 1

    earnings = earnings_of(teacher)
    assert earnings.tail_payments == 0
    assert month(earnings, "2026-11") == Totals(classes=2, seconds=6300, tokens=18, cents=108)
    assert run_audit() == []


def test_a_view_moves_the_checkpoint_on_when_the_tail_is_long(
    client, auth, app, clock, monkeypatch
):
    monkeypatch.setattr(service, "CHECKPOINT_AFTER", 2)
    with app.app_context():
        teacher_id = make_user("teacher", email="tom@example.com").id
        student_id = make_funded_user(100).id
        clock.now = datetime(2026, 11, 2, 9, tzinfo=UTC)
        make_class(db.session.get(User, student_id), db.session.get(User, teacher_id), "completed")
        clock.now = NOW
        wallet_id = wallet_id_of(teacher_id)
    auth.login("tom@example.com")
    first = client.get("/earnings").get_data(as_text=True)
    with app.app_context():
        assert db.session.get(EarningsCheckpoint, wallet_id) is None  # one payment: no need
        clock.now = datetime(2026, 11, 3, 9, tzinfo=UTC)
        make_class(db.session.get(User, student_id), db.session.get(User, teacher_id), "completed")
        clock.now = NOW
    second = client.get("/earnings").get_data(as_text=True)
    with app.app_context():
        checkpoint = db.session.get(EarningsCheckpoint, wallet_id)
        newest = db.session.scalar(
            select(func.max(Posting.seq)).where(Posting.wallet_id == wallet_id)
        )
        assert checkpoint.through_seq == newest
    third = client.get("/earnings").get_data(as_text=True)
    assert "$0.40" in first and "$0.80" in second
    assert text_of(second) == text_of(third)


def test_the_audit_names_a_checkpoint_that_is_not_what_the_ledger_sums_to(three_rates):
    wallet_id = wallet_id_of(three_rates.id)
    service.advance_checkpoint(wallet_id)
    assert run_audit() == []
    db.session.execute(
        update(EarningsMonth)
        .where(EarningsMonth.wallet_id == wallet_id, EarningsMonth.month == "2026-10")
        .values(cents=EarningsMonth.cents + 1)
    )
    db.session.commit()

    assert run_audit() == [
        Violation(
            "earnings-checkpoint",
            f"wallet {wallet_id}'s earnings for 2026-10 say 2 classes, 4200 seconds, "
            "12 tokens, 61 cents, but its class payments up to its checkpoint sum to "
            "2 classes, 4200 seconds, 12 tokens, 60 cents",
        )
    ]


def test_an_incremental_audit_rechecks_the_earnings_of_a_teacher_paid_for_a_class_since(
    three_rates, clock
):
    """After a checkpoint, a month edited is the incremental run's to catch once the
    teacher is paid for a class again (the wallet is in scope); a gift to the teacher
    changes nothing the check compares, so until then the edit is left to `--full`."""
    wallet_id = wallet_id_of(three_rates.id)
    service.advance_checkpoint(wallet_id)
    clock.now = NOW + timedelta(hours=2)  # the earnings checkpoint is older than the audit's
    assert audit().checkpoint_id is not None
    db.session.execute(
        update(EarningsMonth)
        .where(EarningsMonth.wallet_id == wallet_id, EarningsMonth.month == "2026-10")
        .values(cents=EarningsMonth.cents + 1)
    )
    db.session.commit()
    edited = Violation(
        "earnings-checkpoint",
        f"wallet {wallet_id}'s earnings for 2026-10 say 2 classes, 4200 seconds, "
        "12 tokens, 61 cents, but its class payments up to its checkpoint sum to "
        "2 classes, 4200 seconds, 12 tokens, 60 cents",
    )
    student = make_funded_user(50)
    with ledger.atomic():
        ledger.transfer(student.id, three_rates.id, 5, key="earnings-audit:gift")
    assert run_audit() == []
    assert run_audit(full=True) == [edited]

    make_class(student, three_rates, "completed")
    assert run_audit() == [edited]


def test_the_audit_names_a_day_of_a_checkpoint_that_is_not_what_the_ledger_sums_to(three_rates):
    """The day rows ("last month up to the same point" adds them up) are audited as the
    months are: one changed, one deleted and one invented are each named."""
    wallet_id = wallet_id_of(three_rates.id)
    service.advance_checkpoint(wallet_id)
    assert run_audit() == []
    days = days_of(wallet_id)
    months = db.session.scalar(
        select(func.sum(EarningsMonth.cents)).where(EarningsMonth.wallet_id == wallet_id)
    )
    assert len(days) >= 2 and sum(cents for _, cents in days) == months
    changed, deleted = days[0], days[-1]
    db.session.execute(
        update(EarningsDay)
        .where(EarningsDay.wallet_id == wallet_id, EarningsDay.day == changed.day)
        .values(cents=EarningsDay.cents + 5)
    )
    db.session.execute(
        delete(EarningsDay).where(
            EarningsDay.wallet_id == wallet_id, EarningsDay.day == deleted.day
        )
    )
    db.session.add(EarningsDay(wallet_id=wallet_id, day="2026-09-01", cents=7))
    db.session.commit()

    assert run_audit() == [
        Violation(
            "earnings-checkpoint",
            f"wallet {wallet_id}'s earnings for {day} say {kept} cents, but its class "
            f"payments up to its checkpoint sum to {ledger} cents",
        )
        for day, kept, ledger in sorted(
            [
                ("2026-09-01", 7, 0),
                (changed.day, changed.cents + 5, changed.cents),
                (deleted.day, 0, deleted.cents),
            ]
        )
    ]


# The page ----------------------------------------------------------------------------


def test_the_page_shows_the_figures_the_chart_and_the_same_figures_in_a_table(
    client, auth, app, three_rates
):
    auth.login("tess@example.com")
    response = client.get("/earnings")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    page = text_of(html)

    assert "Available 30 tokens yours to withdraw, worth $1.80" in page
    assert "This month so far (November) $0.48 8 tokens from 1 class" in page
    assert "Last month (October) $0.60 12 tokens from 2 classes" in page
    assert "Growth -20% against $0.60 by this point last month (24 Oct 2026, 09:00 UTC)" in page
    assert "Lifetime $1.48 30 tokens earned" in page
    assert "Classes taught 4 2.9 hours of class time, all time" in page

    svg = re.search(r"<svg class=\"chart\".*?</svg>", html, re.S).group(0)
    assert " style=" not in svg and "<script" not in svg
    bars = re.findall(
        r'<g class="chart-month( current)?">\s*<title>([^<]+)</title>\s*'
        r'<rect class="chart-bar" x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="([\d.]+)"',
        svg,
    )
    assert len(bars) == 12
    titles = [title for _, title, _, _ in bars]
    assert titles[0] == "December 2025: $0.00 from 0 classes"
    assert titles[-3:] == [
        "September 2026: $0.40 from 1 class",
        "October 2026: $0.60 from 2 classes",
        "November 2026 so far: $0.48 from 1 class",
    ]
    assert [current for current, _, _, _ in bars].count(" current") == 1
    assert bars[-1][0] == " current"
    heights = [float(height) for _, _, _, height in bars]
    # The scale tops at $10 (the least): 156 units high, so $0.60 is 9.4 units.
    assert heights[-3:] == [6.2, 9.4, 7.5]
    assert heights[:9] == [0.0] * 9
    assert ">$10</text>" in svg and ">$5</text>" in svg and ">$0</text>" in svg

    rows = re.findall(r'<tr data-month="([\d-]+|total)">(.*?)</tr>', html, re.S)
    table = {key: text_of(cells) for key, cells in rows}
    assert list(table)[:4] == ["2026-11", "2026-10", "2026-09", "2026-08"]
    assert table["2026-11"] == "Nov 2026 so far 1 0.8 8 $0.48"
    assert table["2026-10"] == "Oct 2026 2 1.2 12 $0.60"
    assert table["2026-09"] == "Sep 2026 1 1.0 10 $0.40"
    assert table["2025-12"] == "Dec 2025 0 0.0 0 $0.00"
    assert table["total"] == "Twelve months 4 2.9 30 $1.48"


def test_the_chart_scales_to_a_round_figure_above_the_best_month():
    assert [scale_top(c) for c in (0, 999, 1000, 1001, 1500, 1501, 7600, 123_456)] == [
        1000, 1000, 1000, 1500, 1500, 2000, 10000, 150_000
    ]  # fmt: skip
    assert [short_usd(c) for c in (0, 750, 1250, 50_000, 150_000, 1_250_000)] == [
        "$0", "$7.50", "$12.50", "$500", "$1.5k", "$12.5k"
    ]  # fmt: skip
    months = [service.Month(add_months(datetime(2026, 1, 1, tzinfo=UTC), i), Totals())
              for i in range(12)]  # fmt: skip
    months[3] = service.Month(months[3].start, Totals(1, 60, 1, 1))
    chart = bar_chart(months)
    assert chart.bars[3].height == "1.0"  # a month that earned a cent still shows
    assert [bar.year for bar in chart.bars] == ["2026"] + [None] * 11
    assert not chart.empty and bar_chart(months[:3] + months[4:]).empty


def test_the_teachers_navigation_leads_to_the_earnings(client, auth):
    auth.login_as("teacher")
    assert 'href="/earnings">Earnings</a>' in client.get("/teacher").get_data(as_text=True)


@pytest.mark.parametrize("role", ["student", "admin"])
def test_students_and_admins_may_not_see_earnings(client, auth, role):
    auth.login_as(role)
    response = client.get("/earnings")
    assert response.status_code == 403
    assert 'href="/earnings"' not in client.get("/dashboard", follow_redirects=True).get_data(
        as_text=True
    )


def test_anyone_logged_out_is_sent_to_log_in_first(client):
    response = client.get("/earnings")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=%2Fearnings"
