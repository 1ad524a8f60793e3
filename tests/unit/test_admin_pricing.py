"""The pricing page: versions in force, scheduled and past; publishing in the future only."""

from datetime import timedelta

import pytest
from sqlalchemy import select, text

from soma.admin import actions
from soma.audit import run_audit
from soma.extensions import db
from soma.ledger.pricing import PricingRefused, get_token_pricing, publish_pricing
from soma.models import AdminAction, JournalEntry, TokenPricing
from tests.builders import fund, make_user
from tests.helpers import confirm_post, csrf_from, hidden_fields, text_of


def versions() -> list[tuple]:
    return [
        tuple(row)
        for row in db.session.execute(
            select(
                TokenPricing.user_type,
                TokenPricing.version,
                TokenPricing.tokens,
                TokenPricing.usd_cents,
                TokenPricing.class_tokens_per_hour,
                TokenPricing.effective_at,
            ).order_by(TokenPricing.id)
        )
    ]


def records() -> list[AdminAction]:
    return list(db.session.scalars(select(AdminAction).order_by(AdminAction.id)))


def form(client, **fields) -> dict:
    page = client.get("/admin/pricing").get_data(as_text=True)
    base = {"user_type": "student", "tokens": "10", "price": "1.20", "class_tokens_per_hour": "12"}
    return {"csrf_token": csrf_from(page), **base, **fields}


def when(moment) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M")


def test_a_past_or_present_time_is_refused_by_the_form(app, client, auth, clock):
    auth.login_as("admin")
    with app.app_context():
        before = versions()
    for moment in (clock.now - timedelta(days=1), clock.now):
        for confirmed in ({}, {"confirmed": "yes"}):
            answer = client.post(
                "/admin/pricing", data=form(client, effective_at=when(moment), **confirmed)
            )
            page = text_of(answer.get_data(as_text=True))
            assert answer.status_code == 422
            assert "That time has passed: a new price takes effect in the future." in page
            assert 'data-testid="admin-confirm"' not in answer.get_data(as_text=True)
    for bad in ("tomorrow", "2026-13-01T09:00", "2026-11-24", "\x00", "9" * 40):
        answer = client.post("/admin/pricing", data=form(client, effective_at=bad))
        assert answer.status_code == 422
    with app.app_context():
        assert versions() == before
        assert records() == []


def test_the_service_refuses_the_past_now_and_a_time_inside_the_lead(app, ctx, clock):
    before = versions()
    for moment in (clock.now - timedelta(hours=1), clock.now, clock.now + timedelta(seconds=30)):
        with pytest.raises(PricingRefused, match="takes effect in the future"):
            publish_pricing("student", 10, 120, 12, moment)
        db.session.rollback()
    assert versions() == before
    made = publish_pricing("student", 10, 120, 12, clock.now + timedelta(minutes=2))
    db.session.commit()
    assert made.version == 2
    with pytest.raises(PricingRefused, match="Version 2 of the student pricing already"):
        publish_pricing("student", 10, 130, 12, clock.now + timedelta(minutes=2))
    db.session.rollback()
    # The other user type has its own versions: the same time is free for it.
    assert publish_pricing("teacher", 10, 50, 10, clock.now + timedelta(minutes=2)).version == 2


def test_a_version_in_force_before_an_entry_already_written_is_refused(app, ctx, clock):
    """The audit finding: an entry dated by another clock (the builders credit at the real
    time, a replay posts at its own time) after the app's now. A version taking effect
    between the app's now and that entry would change the entry's value after it was
    frozen, and the audit would say entry-value-mismatch."""
    user = make_user("student")
    entry_at = clock.now + timedelta(hours=2)
    fund(user.id, 100, key="later", now=entry_at)
    db.session.commit()
    between = clock.now + timedelta(hours=1)
    with pytest.raises(PricingRefused, match="already has an entry dated"):
        publish_pricing("student", 10, 150, 10, between)
    db.session.rollback()
    assert run_audit() == []
    # What the check prevents: the same version forced in (backdate, tests only).
    publish_pricing("student", 10, 150, 10, between, backdate=True)
    db.session.commit()
    violations = run_audit()
    assert [v.check for v in violations] == ["entry-value-mismatch"]
    entry = db.session.scalars(select(JournalEntry).where(JournalEntry.idempotency_key == "later"))
    assert entry.one().usd_cents == 1000  # frozen at 10 ¢ a token; the new rate says 15 ¢


def test_the_confirmation_shows_a_one_hour_class_and_a_ten_dollar_withdrawal(
    app, client, auth, clock
):
    auth.login_as("admin")
    at = clock.now + timedelta(days=2)
    student = client.post("/admin/pricing", data=form(client, effective_at=when(at)))
    page = text_of(student.get_data(as_text=True))
    assert student.status_code == 200
    assert "Publish student pricing" in page
    assert "Rate 10 tokens = $1.00 → 10 tokens = $1.20" in page
    assert "Class tokens per hour 10 → 12" in page
    assert "A one-hour class costs the student 10 tokens ($1.00) → 12 tokens ($1.44)" in page
    assert "The teacher gets for it 10 tokens (worth $0.40) → 12 tokens (worth $0.48)" in page
    assert (
        "A $10.00 withdrawal 250 tokens held, fee $0.50, net $9.50 → "
        "250 tokens held, fee $0.50, net $9.50" in page
    )
    teacher = client.post(
        "/admin/pricing",
        data=form(
            client,
            user_type="teacher",
            price="0.50",
            class_tokens_per_hour="",
            effective_at=when(at),
        ),
    )
    page = text_of(teacher.get_data(as_text=True))
    assert "Rate 10 tokens = $0.40 → 10 tokens = $0.50" in page
    assert "A one-hour class costs the student 10 tokens ($1.00) → 10 tokens ($1.00)" in page
    assert "The teacher gets for it 10 tokens (worth $0.40) → 10 tokens (worth $0.50)" in page
    assert (
        "A $10.00 withdrawal 250 tokens held, fee $0.50, net $9.50 → "
        "200 tokens held, fee $0.50, net $9.50" in page
    )
    with app.app_context():
        assert len(versions()) == 2  # the confirmation published nothing
        assert records() == []


def test_a_published_version_is_scheduled_then_in_force_and_recorded(app, client, auth, clock):
    admin = auth.login_as("admin")
    with app.app_context():
        old = versions()
    at = clock.now + timedelta(hours=3)
    page = client.post("/admin/pricing", data=form(client, effective_at=when(at)))
    done = client.post("/admin/pricing", data=hidden_fields(page.get_data(as_text=True)))
    assert done.status_code == 303
    shown = text_of(client.get("/admin/pricing").get_data(as_text=True))
    assert "Published student pricing version 2" in shown
    assert "Scheduled: version 2 (10 tokens = $1.20) from 24 Nov 2026, 12:00 UTC" in shown
    assert "In force now Version 1: 10 tokens = $1.00" in shown
    with app.app_context():
        assert versions()[:2] == old  # the old versions are as they were
        assert get_token_pricing("student", clock.now).version == 1
        (record,) = records()
        assert (record.admin_id, record.action, record.object_type) == (
            admin.id,
            "publish_pricing",
            "pricing",
        )
        assert record.object_id == db.session.scalar(
            select(TokenPricing.id).where(TokenPricing.version == 2)
        )
        assert actions.values(record.before)["usd_cents"] == 100
        assert actions.values(record.before)["version"] == 1
        after = actions.values(record.after)
        assert (after["version"], after["usd_cents"], after["class_tokens_per_hour"]) == (
            2,
            120,
            12,
        )
        assert after["effective_at"].startswith("2026-11-24T12:00")
    clock.advance(minutes=3 * 60 + 1)
    shown = text_of(client.get("/admin/pricing").get_data(as_text=True))
    assert "In force now Version 2: 10 tokens = $1.20" in shown
    assert "Scheduled:" not in shown
    assert "A one-hour class 12 tokens ($1.44)" in shown
    with app.app_context():
        assert get_token_pricing("student", clock.now).version == 2


def test_the_same_time_twice_is_refused_on_the_form(app, client, auth, clock):
    auth.login_as("admin")
    at = when(clock.now + timedelta(hours=1))
    assert confirm_post(client, "/admin/pricing", form(client, effective_at=at)).status_code == 303
    again = confirm_post(client, "/admin/pricing", form(client, effective_at=at, price="1.30"))
    assert again.status_code == 422
    assert "Version 2 of the student pricing already takes effect at that time" in text_of(
        again.get_data(as_text=True)
    )
    with app.app_context():
        assert [row[1] for row in versions() if row[0] == "student"] == [1, 2]
        assert len(records()) == 1


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"tokens": "0"}, "Enter a number of tokens: a whole number from 1 to 1,000,000."),
        ({"tokens": "1.5"}, "Enter a number of tokens"),
        ({"price": "1.234"}, "Enter the price in whole cents"),
        ({"price": "NaN"}, "Enter a price in US dollars"),
        ({"price": "1e999999999"}, "Enter a price in US dollars"),
        ({"price": "0"}, "Enter a price above $0.00"),
        ({"class_tokens_per_hour": ""}, "Enter how many tokens an hour of class costs."),
        ({"user_type": "admin"}, "Not a valid choice"),
    ],
)
def test_bad_numbers_are_form_errors(app, client, auth, clock, fields, message):
    auth.login_as("admin")
    at = when(clock.now + timedelta(hours=1))
    answer = client.post(
        "/admin/pricing", data=form(client, effective_at=at, confirmed="yes", **fields)
    )
    assert answer.status_code == 422
    assert message in text_of(answer.get_data(as_text=True))
    with app.app_context():
        assert len(versions()) == 2 and records() == []


def test_old_versions_cannot_be_updated(app, ctx):
    with pytest.raises(Exception, match="append-only"):
        db.session.execute(text("UPDATE token_pricing SET usd_cents = 1 WHERE version = 1"))
    db.session.rollback()
    assert {row[3] for row in versions()} == {100, 40}


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_only_admins_see_or_publish_pricing(app, client, auth, clock, role):
    auth.login_as(role)
    assert client.get("/admin/pricing").status_code == 403
    page = client.get("/notifications/").get_data(as_text=True)
    answer = client.post(
        "/admin/pricing",
        data={
            "csrf_token": csrf_from(page),
            "user_type": "student",
            "tokens": "10",
            "price": "9.00",
            "class_tokens_per_hour": "10",
            "effective_at": when(clock.now + timedelta(days=1)),
            "confirmed": "yes",
        },
    )
    assert answer.status_code == 403
    with app.app_context():
        assert len(versions()) == 2 and records() == []
