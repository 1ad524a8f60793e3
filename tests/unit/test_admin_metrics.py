"""The operator's metrics at /admin/: tokens in circulation by role and platform account,
entries per day, active wallets, revenue per month (class margin + withdrawal fees -
refunds, at frozen values) and failed payments, built through the real services; and the
checkpoint that keeps the page fast, which must never change a figure."""

import re
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select

from soma import ledger
from soma.admin import metrics
from soma.charts import Point, bar_chart, short_count, short_usd
from soma.extensions import db
from soma.models import (
    EntryKind,
    JournalEntry,
    MetricsActiveDay,
    MetricsCheckpoint,
    MetricsDay,
    MetricsWallet,
    PlatformAccount,
    utcnow,
)
from soma.money import usd
from soma.payouts import withdrawals as withdrawal_service
from soma.purchases import reversals
from soma.purchases import service as purchase_service
from tests.builders import (
    fund,
    make_class,
    make_teacher,
    make_user,
    make_withdrawal,
    paid_purchase,
)
from tests.helpers import text_of


def entry(kind: EntryKind) -> JournalEntry:
    return db.session.scalars(
        select(JournalEntry).where(JournalEntry.kind == kind.value).order_by(JournalEntry.id.desc())
    ).first()


def month_key(moment) -> str:
    return f"{moment:%Y-%m}"


def from_scratch(now) -> Counter:
    """Entries per UTC day, counted straight from the ledger, to check the page against."""
    return Counter(
        f"{created:%Y-%m-%d}"
        for created in db.session.scalars(select(JournalEntry.created_at))
        if (now.date() - created.date()).days < metrics.DAYS
    )


@pytest.fixture
def economy(ctx, clock):
    """A student who bought 100 tokens ($10), took a one-hour class (10 tokens) and had $5
    refunded; a teacher who earned the class and withdrew $10 ($0.50 fee); a student last
    seen 40 days ago; a failed purchase; a failed withdrawal. The clock is the real time,
    as purchases and refunds date their entries by it."""
    clock.now = utcnow() - timedelta(hours=2)
    old = make_user("student", name="Old Student")
    fund(old.id, 30, now=clock.now - timedelta(days=40))
    student = make_user("student", name="Sam Student")
    teacher = make_teacher(2000, name="Tess Teacher")
    paid = paid_purchase(student, tokens=100)
    make_class(student, teacher, "completed")
    admin = make_user("admin", email="boss@example.com")
    reversals.refund_by_admin(paid.id, 500, admin, "refund-key-1")
    withdrawal = make_withdrawal(teacher, 1000)
    failed_withdrawal = make_withdrawal(teacher, 1000)
    clock.advance(seconds=5)
    withdrawal_service.mark_failed(failed_withdrawal.id, "rail:sandbox", "The bank refused it.")
    withdrawal_service.sweep()  # the sandbox rail pays the other
    pending = purchase_service.start(
        student,
        purchase_service.quote(custom_tokens=50),
        purchase_service.Provider.SANDBOX,
        "metrics-failed-purchase",
    )
    purchase_service.fail(pending.id, "sandbox", "Card declined.")
    clock.now = utcnow()
    return {
        "student": student,
        "teacher": teacher,
        "old": old,
        "paid": paid,
        "withdrawal": withdrawal_service.fresh(withdrawal.id),
        "failed_withdrawal": failed_withdrawal.id,
        "failed_purchase": pending.id,
    }


def test_each_figure_is_what_the_services_wrote(economy, clock):
    m = metrics.figures(clock.now)
    assert economy["withdrawal"].status == "paid" and economy["withdrawal"].fee_cents == 50

    # Circulation: the student bought 100, spent 10 on the class, 50 went back with the
    # $5 refund; the teacher was funded 2,000, earned 10 and withdrew 250 (held then paid)
    # and 250 more were released by the failed withdrawal; the old student holds 30.
    holdings = {h.name: (h.wallets, h.available, h.locked) for h in m.holdings}
    assert holdings == {"student": (2, 40 + 30, 0), "teacher": (1, 2000 + 10 - 250, 0)}
    student_value = [h.value_cents for h in m.holdings if h.name == "student"]
    assert student_value == [700]  # 70 tokens at 10 c
    platform = {h.name: h.available for h in m.platform}
    assert platform[PlatformAccount.FEES] == 12  # 50 c of fee is 12 tokens at 4 c, rounded down
    assert platform[PlatformAccount.REDEMPTION] == 250 - 12
    assert m.ledger_sum == 0
    assert m.users == {"student": 2, "teacher": 1, "admin": 1}

    # Entries per day, as counted straight from the ledger.
    expected = from_scratch(clock.now)
    assert {f"{d.day:%Y-%m-%d}": d.totals.entries for d in m.days if d.totals.entries} == dict(
        expected
    )
    assert len(m.days) == 90 and m.days[-1].day == clock.now.date()

    # Active in 30 days: the student and the teacher, not the student seen 40 days ago.
    assert m.active == {"student": 1, "teacher": 1}

    # Revenue: the class margin is 10 tokens at 10 c less at 4 c; the fee 50 c; the refund
    # took 50 bought tokens back, worth $5 at 10 c.
    settle = entry(EntryKind.CLASS_SETTLE)
    assert (settle.usd_cents, settle.teacher_usd_cents) == (100, 40)
    by_month = {month_key(month.start): month.totals for month in m.months}
    totals = [by_month[month_key(e.created_at)] for e in (settle,)]
    year = m.year
    assert (year.classes, year.margin_cents) == (1, 60)
    assert (year.withdrawals, year.fee_cents) == (1, 50)
    assert (year.refunds, year.refund_cents) == (1, 500)
    assert year.revenue_cents == 60 + 50 - 500
    assert totals[0].margin_cents == 60

    # Failed payments in 30 days, with the latest listed.
    assert (m.failed.purchases, m.failed.withdrawals) == (1, 1)
    assert [p.id for p in m.failed.latest_purchases] == [economy["failed_purchase"]]
    assert [w.id for w in m.failed.latest_withdrawals] == [economy["failed_withdrawal"]]


def test_the_page_shows_every_figure_with_a_chart_and_a_table_beneath_each(
    economy, client, auth, clock
):
    auth.login("boss@example.com")
    response = client.get("/admin/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    page = text_of(html)

    assert "Active wallets, last 30 days 2 1 student, 1 teacher" in page
    assert "Failed payments, last 30 days 2 1 purchase, 1 withdrawal" in page
    rows = dict(re.findall(r'<tr data-holder="(\w+)">(.*?)</tr>', html, re.S))
    assert text_of(rows["student"]) == "Students 2 70 0 70 $7.00"
    assert text_of(rows["teacher"]) == "Teachers 1 1,760 0 1,760 $70.40"
    assert text_of(rows["fees"]) == "Fees (withdrawal fees) 12 0 12 \N{EM DASH}"
    assert text_of(rows["sum"]) == "Every account 0 balanced"
    assert 'data-testid="count-student">2<' in html

    # Two charts, no script or style in them, each bar titled; tables beneath.
    svgs = re.findall(r"<svg class=\"chart\".*?</svg>", html, re.S)
    assert len(svgs) == 2
    assert all(" style=" not in svg and "<script" not in svg for svg in svgs)
    assert svgs[0].count('<rect class="chart-bar"') == 90
    assert svgs[1].count('<rect class="chart-bar"') == 12
    today = f"{clock.now:%Y-%m-%d}"
    day_rows = dict(re.findall(r'<tr data-day="([\d-]+|total)">(.*?)</tr>', html, re.S))
    expected = from_scratch(clock.now)
    assert text_of(day_rows["total"]).split()[2] == f"{sum(expected.values()):,}"
    if today in expected:
        assert text_of(day_rows[today]).split()[-2] == f"{expected[today]:,}"

    month_rows = dict(re.findall(r'<tr data-month="([\d-]+|total)">(.*?)</tr>', html, re.S))
    assert text_of(month_rows["total"]) == "Twelve months $0.60 $0.50 -$5.00 -$3.90"
    # Each month's bar says its parts (the class, fee and refund may fall in different
    # months at a month's end); a month below zero hangs below the zero line.
    parts = Counter()
    for kind, cents in ((EntryKind.CLASS_SETTLE, 60), (EntryKind.WITHDRAWAL_PAID, 50)):
        parts[(month_key(entry(kind).created_at), kind)] += cents
    parts[(month_key(entry(EntryKind.REFUND).created_at), EntryKind.REFUND)] += 500
    kinds = (EntryKind.CLASS_SETTLE, EntryKind.WITHDRAWAL_PAID, EntryKind.REFUND)
    for key in {key for key, _ in parts}:
        margin, fee, refund = (parts[(key, kind)] for kind in kinds)
        said = f"({usd(margin)} class margin, {usd(fee)} fees, {usd(refund)} refunds)"
        assert f"{usd(margin + fee - refund, signed=True)} {said}" in svgs[1]
    assert (
        '<g class="chart-month current negative">' in svgs[1]
        or '<g class="chart-month negative">' in svgs[1]
    )
    assert '<line class="chart-zero"' in svgs[1]
    assert "class margin" in text_of(html.split('data-testid="revenue-definition"')[1][:600])
    assert f'href="/admin/purchases/{economy["failed_purchase"]}"' in html
    assert f'href="/admin/withdrawals/{economy["failed_withdrawal"]}"' in html
    assert 'href="/admin/withdrawals?status=failed"' in html


def test_the_checkpoint_changes_no_figure_and_matches_a_fold_from_scratch(economy, clock):
    before = metrics.figures(clock.now)
    assert before.through_entry_id == 0 and before.tail_entries == sum(
        from_scratch(clock.now).values()
    )
    later = clock.now + metrics.FOLD_LAG + timedelta(minutes=1)
    newest = db.session.scalar(select(func.max(JournalEntry.id)))

    # Part of the way, then the rest: each step gives the same figures.
    middle = metrics.advance_checkpoint(later, upto=newest // 2)
    assert middle == newest // 2
    halfway = metrics.figures(clock.now)
    assert halfway.through_entry_id == middle
    assert metrics.catch_up(later) == newest
    after = metrics.figures(clock.now)
    assert after.tail_entries == 0
    for figures in (halfway, after):
        assert figures.days == before.days
        assert figures.months == before.months
        assert figures.active == before.active

    # The rollup is what one fold of every entry at once writes.
    stepped = db.session.execute(select(MetricsDay).order_by(MetricsDay.day)).scalars().all()
    stepped = [(d.day, d.entries, d.margin_cents, d.fee_cents, d.refund_cents) for d in stepped]
    stepped_wallets = db.session.execute(
        select(MetricsWallet.wallet_id, MetricsWallet.last_at)
    ).all()
    stepped_active_days = active_days()
    assert stepped_active_days == recounted_active_days()
    for table in (MetricsDay, MetricsWallet, MetricsActiveDay, MetricsCheckpoint):
        db.session.execute(delete(table))
    db.session.commit()
    assert metrics.advance_checkpoint(later) == newest
    whole = db.session.execute(select(MetricsDay).order_by(MetricsDay.day)).scalars().all()
    assert [
        (d.day, d.entries, d.margin_cents, d.fee_cents, d.refund_cents) for d in whole
    ] == stepped
    assert sorted(
        db.session.execute(select(MetricsWallet.wallet_id, MetricsWallet.last_at)).all()
    ) == sorted(stepped_wallets)
    assert active_days() == stepped_active_days == recounted_active_days()
    assert sum(d[1] for d in stepped) == db.session.scalar(select(func.count(JournalEntry.id)))


def active_days() -> list[tuple]:
    """The rollup's active wallets by day and role."""
    rows = db.session.execute(
        select(MetricsActiveDay.day, MetricsActiveDay.role, MetricsActiveDay.wallets)
    )
    return sorted(tuple(row) for row in rows)


def recounted_active_days() -> list[tuple]:
    """The same, counted from the rollup's wallets, one by one."""
    found = Counter(
        (f"{last_at.astimezone(UTC):%Y-%m-%d}", role)
        for role, last_at in db.session.execute(select(MetricsWallet.role, MetricsWallet.last_at))
    )
    return sorted((day, role, count) for (day, role), count in found.items())


def test_active_wallets_start_at_the_windows_first_instant_wherever_the_checkpoint_is(ctx, clock):
    """The window starts 30 days ago to the instant: on its first day, a wallet last seen
    before that instant is not active and one seen after it is; a wallet counted by the
    rollup and seen again in the tail counts once."""
    now = datetime(2026, 11, 24, 9, tzinfo=UTC)
    since = now - timedelta(days=metrics.ACTIVE_DAYS)  # 25 October, 09:00
    clock.now = now
    users = {}
    for name, when in {
        "day before": since - timedelta(hours=10),
        "first day, before": since - timedelta(hours=1),
        "first day, after": since + timedelta(hours=1),
        "later": now - timedelta(days=14),
        "comes back": now - timedelta(days=54),
    }.items():
        users[name] = make_user("student", name=name)
        fund(users[name].id, 10, now=when)
    teacher = make_user("teacher")
    fund(teacher.id, 10, now=since + timedelta(minutes=1))
    later = now + metrics.FOLD_LAG + timedelta(minutes=1)
    expected = {"student": 2, "teacher": 1}
    assert metrics.figures(now).active == expected  # no checkpoint: all from the tail
    metrics.catch_up(later)
    assert metrics.figures(now).active == expected
    assert active_days() == recounted_active_days()
    assert ("2026-10-25", "student", 2) in active_days()

    # Seen again, in the tail: one already counted and one back after two months.
    fund(users["later"].id, 10, now=now - timedelta(hours=1))
    fund(users["comes back"].id, 10, now=now - timedelta(hours=1))
    figures = metrics.figures(now)
    assert figures.tail_entries == 2
    assert figures.active == {"student": 3, "teacher": 1}
    metrics.catch_up(later)
    assert metrics.figures(now).active == {"student": 3, "teacher": 1}
    assert active_days() == recounted_active_days()
    # A minute later the first day's early wallet is still out, the later one still in;
    # a day later the first day's late one is out too.
    assert metrics.figures(now + timedelta(minutes=1)).active == {"student": 3, "teacher": 1}
    assert metrics.figures(now + timedelta(days=1)).active == {"student": 2, "teacher": 0}


def test_a_view_after_new_entries_shows_them_and_the_fold_takes_in_only_those(
    economy, client, auth, clock
):
    later = clock.now + metrics.FOLD_LAG + timedelta(minutes=1)
    first = metrics.catch_up(later)
    folded = db.session.scalar(select(func.sum(MetricsDay.entries)))
    auth.login("boss@example.com")
    html = client.get("/admin/").get_data(as_text=True)
    assert "Active wallets, last 30 days 2 " in text_of(html)

    # The old student comes back: a gift to a new student, now.
    newcomer = make_user("student")
    with ledger.atomic():
        ledger.transfer(economy["old"].id, newcomer.id, 5, key="metrics-gift", now=clock.now)
    html = client.get("/admin/").get_data(as_text=True)
    assert "Active wallets, last 30 days 4 3 students, 1 teacher" in text_of(html)
    m = metrics.figures(clock.now)
    assert m.through_entry_id == first and m.tail_entries == 1
    assert m.days[-1].totals.entries == from_scratch(clock.now)[f"{clock.now:%Y-%m-%d}"]

    # Too new to fold yet (an older id may still be committing): the checkpoint waits.
    assert metrics.advance_checkpoint(clock.now) == first
    # Once old enough, the fold adds that one entry and no other.
    assert metrics.advance_checkpoint(later) > first
    assert db.session.scalar(select(func.sum(MetricsDay.entries))) == folded + 1
    assert metrics.figures(clock.now).active == {"student": 3, "teacher": 1}


def test_a_view_moves_the_checkpoint_once_the_tail_is_long(ctx, client, auth, clock, monkeypatch):
    clock.now = utcnow()
    student = make_user("student")
    for n in range(4):
        fund(student.id, 10, key=f"metrics-tail-{n}", now=clock.now - timedelta(hours=1))
    auth.login_as("admin")
    monkeypatch.setattr(metrics, "CHECKPOINT_AFTER", 3)
    client.get("/admin/")
    through = db.session.scalar(select(MetricsCheckpoint.through_entry_id))
    assert through == db.session.scalar(select(func.max(JournalEntry.id)))
    assert metrics.figures(clock.now).tail_entries == 0


def test_students_and_teachers_may_not_see_the_metrics(client, auth):
    for role in ("student", "teacher"):
        auth.login_as(role)
        response = client.get("/admin/")
        assert response.status_code == 403
        assert "Tokens in circulation" not in response.get_data(as_text=True)
        auth.logout()


def test_the_shared_chart_draws_counts_and_bars_below_zero():
    assert [short_count(n) for n in (0, 750, 1500, 25_000, 1_200_000)] == [
        "0", "750", "1.5k", "25k", "1.2M"
    ]  # fmt: skip
    assert short_usd(-4000) == "-$40"
    points = [Point(v, None, f"{v}") for v in (300, -100, 0)]
    chart = bar_chart(points, short_usd, 1000)
    # The axis runs from -$1.00 to $10.00, zero between: the negative bar hangs below it.
    assert [t.label for t in chart.ticks] == ["-$1", "$0", "$10"]
    up, down, flat = chart.bars
    assert not up.negative and down.negative and chart.below_zero
    assert down.y == chart.zero_y and up.y < chart.zero_y
    assert float(up.y) + float(up.height) == pytest.approx(float(chart.zero_y), abs=0.11)
    assert flat.height == "0.0" and not chart.empty
    assert bar_chart([Point(0, None, "")] * 3, short_count, 10).empty


def test_a_reversed_payout_takes_its_fee_back_and_a_failed_refund_returns_its_value(economy, clock):
    before = metrics.figures(clock.now).year
    withdrawal = economy["withdrawal"]
    assert withdrawal_service.reverse_paid(withdrawal.id, "tr_rev_1", "stripe", "Reversed.")
    paid = economy["paid"]
    reversals.report(
        paid.id,
        f"sandbox:refund:{paid.id}:refund-key-1",
        reversals.ReversalStatus.FAILED,
        500,
        "sandbox",
    )

    after = metrics.figures(clock.now).year

    assert (after.withdrawals, after.fee_cents) == (before.withdrawals - 1, before.fee_cents - 50)
    assert (after.refunds, after.refund_cents) == (0, 0)  # the 50 tokens went back to the student
    assert after.revenue_cents == 60  # the class margin alone
    assert after.margin_cents == before.margin_cents


def test_the_command_sums_every_entry_old_enough_into_the_rollup(ctx, runner, clock):
    clock.now = utcnow()
    student = make_user("student")
    fund(student.id, 10, key="metrics-cli-old", now=clock.now - timedelta(hours=1))
    fund(student.id, 10, key="metrics-cli-new", now=clock.now)

    result = runner.invoke(args=["soma", "metrics"])

    assert result.exit_code == 0, result.output
    old = db.session.scalar(
        select(JournalEntry.id).where(JournalEntry.idempotency_key == "metrics-cli-old")
    )
    assert f"summed through entry {old:,} (from 0)" in result.output
    assert db.session.scalar(select(func.sum(MetricsDay.entries))) == 1
    assert metrics.figures(clock.now).tail_entries == 1  # the newest waits in the tail


def test_a_gap_in_the_entry_ids_does_not_stop_the_checkpoint(ctx, clock, backend):
    clock.now = utcnow()
    student = make_user("student")
    fund(student.id, 10, key="metrics-gap-1", now=clock.now - timedelta(hours=2))
    # An entry rolled back: on PostgreSQL its id is gone from the sequence for good.
    ledger.credit(student.id, 10, key="metrics-gap-lost", now=clock.now - timedelta(hours=2))
    db.session.rollback()
    fund(student.id, 10, key="metrics-gap-2", now=clock.now - timedelta(hours=1))
    ids = db.session.scalars(select(JournalEntry.id).order_by(JournalEntry.id)).all()
    if backend == "postgresql":
        assert ids[-1] - ids[-2] == 2  # the gap
    later = clock.now + timedelta(minutes=1)

    # A batch of one id: each fold still takes the next entry in, past the gap.
    assert metrics.advance_checkpoint(later, batch=1) == ids[-2]
    assert metrics.advance_checkpoint(later, batch=1) == ids[-1]
    assert metrics.advance_checkpoint(later, batch=1) == ids[-1]
    assert db.session.scalar(select(func.sum(MetricsDay.entries))) == len(ids)
