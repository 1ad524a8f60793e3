"""The record of every admin action: written with the action, never without it, and the log."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from soma.admin import actions
from soma.extensions import db
from soma.models import AdminAction, User, utcnow
from soma.payouts import withdrawals as service
from soma.purchases import reversals
from tests.builders import make_teacher, make_user, paid_purchase, payout_method
from tests.helpers import balances, confirm_post, csrf_from, hidden_fields, text_of


def records() -> list[tuple]:
    return [
        (row.action, row.object_type, row.object_id, actions.values(row.before),
         actions.values(row.after), row.reason)
        for row in db.session.scalars(select(AdminAction).order_by(AdminAction.id))
    ]  # fmt: skip


def bank_withdrawal(clock, cents: int = 2000):
    teacher = make_teacher(1000)
    method = payout_method(teacher, "bank", now=clock.now - timedelta(days=2))
    return teacher, service.request(teacher, method.id, cents, f"bank-{cents}")


# The retrofitted actions ------------------------------------------------------------------


def test_approve_and_mark_paid_are_confirmed_then_recorded_with_the_move(app, client, auth, clock):
    with app.app_context():
        teacher, withdrawal = bank_withdrawal(clock)
        teacher_id, wid = teacher.id, withdrawal.id
    admin = auth.login_as("admin")
    detail = client.get(f"/admin/withdrawals/{wid}").get_data(as_text=True)
    review = client.post(
        f"/admin/withdrawals/{wid}/approve", data={"csrf_token": csrf_from(detail)}
    )
    text = text_of(review.get_data(as_text=True))
    assert f"Approve withdrawal #{wid}" in text and "To send $19.50" in text
    assert "You will send $19.50 by bank transfer, then mark it paid." in text
    with app.app_context():
        assert service.fresh(wid).status == "requested" and records() == []
    approved = client.post(
        f"/admin/withdrawals/{wid}/approve", data=hidden_fields(review.get_data(as_text=True))
    )
    assert approved.status_code == 303
    paid = confirm_post(
        client,
        f"/admin/withdrawals/{wid}/paid",
        {"csrf_token": csrf_from(detail), "reference": "FT-77"},
    )
    assert paid.status_code == 303
    with app.app_context():
        assert service.fresh(wid).status == "paid"
        assert balances(teacher_id) == (500, 0)
        assert records() == [
            ("approve_withdrawal", "withdrawal", wid, {"status": "requested"},
             {"status": "processing"}, None),
            ("pay_withdrawal", "withdrawal", wid,
             {"provider_reference": None, "status": "processing"},
             {"provider_reference": "FT-77", "status": "paid"}, None),
        ]  # fmt: skip
        rows = db.session.scalars(select(AdminAction.admin_id)).all()
        assert rows == [admin.id, admin.id]


def test_a_rejection_is_recorded_with_its_reason_and_a_second_one_is_not(ctx, clock):
    admin = make_user("admin")
    teacher, withdrawal = bank_withdrawal(clock)
    service.reject(withdrawal.id, admin, "The account name does not match.")
    service.reject(withdrawal.id, admin, "again")  # already rejected: nothing more
    assert records() == [
        ("reject_withdrawal", "withdrawal", withdrawal.id, {"status": "requested"},
         {"status": "rejected"}, "The account name does not match."),
    ]  # fmt: skip
    assert balances(teacher.id) == (1000, 0)


def test_a_failing_withdrawal_action_leaves_no_record(app, client, auth, clock):
    with app.app_context():
        admin = make_user("admin")
        _, withdrawal = bank_withdrawal(clock)
        service.approve(withdrawal.id, admin)
        service.pay_by_admin(withdrawal.id, admin, "FT-1")
        wid, kept = withdrawal.id, len(records())
        with pytest.raises(service.WithdrawalConflict):
            service.reject(withdrawal.id, admin, "Too late.")  # a reject of a paid one
        db.session.rollback()
        with pytest.raises(service.WithdrawalConflict):
            service.approve(withdrawal.id, admin)
        db.session.rollback()
        assert len(records()) == kept == 2
    auth.login_as("admin")
    detail = client.get(f"/admin/withdrawals/{wid}").get_data(as_text=True)
    # Refused (409): a reject and an approval of a paid withdrawal. Marked paid again: a
    # repeat that does nothing, so nothing is recorded either.
    for action, extra, status in (
        ("reject", {"reason": "No."}, 409),
        ("approve", {}, 409),
        ("paid", {"reference": "X"}, 303),
    ):
        answer = client.post(
            f"/admin/withdrawals/{wid}/{action}",
            data={"csrf_token": csrf_from(detail), "confirmed": "yes", **extra},
        )
        assert answer.status_code == status
        unconfirmed = client.post(
            f"/admin/withdrawals/{wid}/{action}", data={"csrf_token": csrf_from(detail), **extra}
        )
        assert unconfirmed.status_code == 409  # not even offered for confirmation
        assert 'data-testid="admin-confirm"' not in unconfirmed.get_data(as_text=True)
    with app.app_context():
        assert len(records()) == 2 and service.fresh(wid).status == "paid"


def test_the_record_is_in_the_actions_transaction(ctx, clock, monkeypatch):
    """A failure after the record was added, inside the action's transaction, takes the
    record back with the action: the record is never committed on its own."""
    admin = make_user("admin")
    teacher, withdrawal = bank_withdrawal(clock)

    def broken(*args, **kwargs):
        raise RuntimeError("the notification could not be written")

    monkeypatch.setattr(service, "notify", broken)
    with pytest.raises(RuntimeError):
        service.reject(withdrawal.id, admin, "No.")
    assert records() == []
    assert service.fresh(withdrawal.id).status == "requested"
    assert balances(teacher.id) == (1000 - 500, 500)


def test_a_refund_is_confirmed_then_recorded_once_and_a_refused_one_is_not(
    app, client, auth, clock
):
    with app.app_context():
        student = make_user("student")
        purchase = paid_purchase(student, package_tokens=250)
        pid, sid = purchase.id, student.id
    admin = auth.login_as("admin")
    page = client.get(f"/admin/purchases/{pid}").get_data(as_text=True)
    key = re.search(r'name="key" value="([^"]+)"', page).group(1)
    data = {"csrf_token": csrf_from(page), "amount": "", "key": key}
    review = client.post(f"/admin/purchases/{pid}/refund", data=data)
    text = text_of(review.get_data(as_text=True))
    assert f"Refund purchase #{pid}" in text and "Refund $25.00" in text
    assert "Left to refund after $0.00" in text
    fields = hidden_fields(review.get_data(as_text=True))
    assert fields["amount"] == "25.00"  # the rest, as quoted, not "whatever is left then"
    with app.app_context():
        assert records() == [] and balances(sid) == (260, 0)
    partial = confirm_post(client, f"/admin/purchases/{pid}/refund", {**data, "amount": "5.00"})
    assert partial.status_code == 303
    # The same form (its key) sent again for another amount is refused: no second record.
    again = confirm_post(client, f"/admin/purchases/{pid}/refund", {**data, "amount": "3.00"})
    assert again.status_code == 409
    too_much = confirm_post(client, f"/admin/purchases/{pid}/refund", {**data, "amount": "21.00"})
    assert too_much.status_code == 422
    with app.app_context():
        with pytest.raises(reversals.RefundRefused):
            reversals.refund_by_admin(pid, 2001, db.session.get(User, admin.id), "another-key-1")
        db.session.rollback()
        ((action, kind, object_id, before, after, reason),) = records()
        assert (action, kind, object_id, reason) == ("refund", "purchase", pid, None)
        assert before == {"refundable_minor": 2500, "status": "paid"}
        assert after["refundable_minor"] == 2000 and after["refund_minor"] == 500
        assert (after["refund_status"], after["currency"]) == ("succeeded", "USD")
        assert after["status"] == "paid"  # in part: still paid, with a refund


# The log ---------------------------------------------------------------------------------


def logged(app) -> dict:
    """Two admins' actions of several kinds, as other parts write them."""
    with app.app_context():
        ada = make_user("admin", name="Ada Admin", email="ada@example.com")
        bob = make_user("admin", name="Bob Boss", email="bob@example.com")
        student = make_user("student")
        rows = [
            (ada, "freeze", "user", student.id, {"frozen": False}, {"frozen": True},
             "Chargebacks."),
            (bob, "unfreeze", "user", student.id, {"frozen": True}, {"frozen": False}, "Cleared."),
            (ada, "acknowledge_alert", "alert", 7, {"acknowledged": False},
             {"acknowledged": True}, None),
            (bob, "run_audit", "audit_run", 3, None, {"status": "queued"}, None),
            (ada, "retire_package", "package", 2, {"active": True, "tokens": 100},
             {"active": False, "tokens": 100}, None),
        ]  # fmt: skip
        for admin, *rest in rows:
            actions.record(admin, *rest[:5], reason=rest[5])
        db.session.commit()
        ids = db.session.scalars(select(AdminAction.id).order_by(AdminAction.id)).all()
        return {"ada": ada.id, "bob": bob.id, "student": student.id, "ids": ids}


def shown_ids(page: str) -> list[int]:
    return [int(found) for found in re.findall(r'data-testid="action-(\d+)"', page)]


def test_the_log_shows_every_action_newest_first_with_labels_and_changes(app, client, auth):
    made = logged(app)
    auth.login(email="ada@example.com")
    page = client.get("/admin/actions").get_data(as_text=True)
    assert shown_ids(page) == made["ids"][::-1]
    text = text_of(page)
    for label in ("Froze an account", "Unfroze an account", "Acknowledged an alert",
                  "Ran the audit", "Retired a package"):  # fmt: skip
        assert label in text
    assert "frozen: no → yes" in text and "Chargebacks." in text
    assert "active: yes → no" in text and "tokens: 100" not in text  # unchanged: not shown
    assert "status: — → queued" in text
    assert f'href="/admin/users/{made["student"]}">User #{made["student"]}<' in page
    assert f'href="/admin/users/{made["ada"]}">Ada Admin<' in page
    assert 'href="/admin/packages">Package #2<' in page
    with app.app_context():
        ada = db.session.get(User, made["ada"])
        at = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
        actions.record(
            ada,
            "publish_pricing",
            "pricing",
            9,
            {"usd_cents": 100, "effective_at": at - timedelta(days=400)},
            {"usd_cents": 120, "effective_at": at},
        )
        actions.record(
            ada,
            "refund",
            "purchase",
            4,
            {"refundable_minor": 2500},
            {"refundable_minor": 2000, "currency": "USD"},
        )
        db.session.commit()
    text = text_of(client.get("/admin/actions").get_data(as_text=True))
    assert "usd: $1.00 → $1.20" in text
    assert "effective at: 30 Oct 2025, 09:00 UTC → 04 Dec 2026, 09:00 UTC" in text
    assert "refundable: $25.00 → $20.00" in text


def test_the_log_filters_and_pages(app, client, auth, monkeypatch):
    made = logged(app)
    ids = made["ids"]
    auth.login(email="ada@example.com")

    def shown(query: str) -> list[int]:
        answer = client.get(f"/admin/actions?{query}")
        assert answer.status_code == 200
        return shown_ids(answer.get_data(as_text=True))

    assert shown(f"admin={made['bob']}") == [ids[3], ids[1]]
    assert shown("action=freeze") == [ids[0]]
    assert shown("object_type=user") == [ids[1], ids[0]]
    assert shown(f"object_type=user&object_id={made['student']}&admin={made['ada']}") == [ids[0]]
    today = utcnow().date()
    assert shown(f"start={today}&end={today}") == ids[::-1]
    assert shown(f"end={today - timedelta(days=1)}") == []
    assert shown(f"start={today + timedelta(days=1)}") == []

    monkeypatch.setattr("soma.admin.action_log.PER_PAGE", 2)
    first = client.get("/admin/actions?object_type=user&admin=").get_data(as_text=True)
    assert shown_ids(first) == [ids[1], ids[0]]
    assert 'data-testid="older-actions"' not in first
    pages, query = [], "/admin/actions"
    while query:
        page = client.get(query).get_data(as_text=True)
        pages.append(shown_ids(page))
        found = re.search(r'href="([^"]+)"[^>]*data-testid="older-actions"', page)
        query = found.group(1).replace("&amp;", "&") if found else None
    assert pages == [[ids[4], ids[3]], [ids[2], ids[1]], [ids[0]]]
    filtered = client.get(f"/admin/actions?admin={made['ada']}").get_data(as_text=True)
    assert shown_ids(filtered) == [ids[4], ids[2]]
    older = re.search(r'href="([^"]+)"[^>]*data-testid="older-actions"', filtered).group(1)
    assert f"admin={made['ada']}" in older
    assert shown_ids(client.get(older.replace("&amp;", "&")).get_data(True)) == [ids[0]]


@pytest.mark.parametrize(
    "query,message",
    [
        ("admin=x", "Choose one of the admins."),
        ("admin=" + "9" * 30, "Choose one of the admins."),
        ("action=drop_table", "Choose one of the actions."),
        ("object_type=%00", "Choose one of the kinds of object."),
        ("object_id=-1", "number, such as 42."),
        ("start=2026-02-30", "Enter the first date as YYYY-MM-DD"),
        ("end=1800-01-01", "Enter the last date as YYYY-MM-DD"),
        ("start=2026-12-02&end=2026-12-01", "The first date comes after the last one."),
    ],
)
def test_a_bad_filter_is_named_not_ignored(app, client, auth, query, message):
    logged(app)
    auth.login(email="ada@example.com")
    answer = client.get(f"/admin/actions?{query}")
    assert answer.status_code == 400
    page = answer.get_data(as_text=True)
    assert message in text_of(page) and shown_ids(page) == []


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_only_admins_read_the_log(app, client, auth, role):
    logged(app)
    auth.login_as(role)
    answer = client.get("/admin/actions")
    assert answer.status_code == 403
    assert "Froze an account" not in answer.get_data(as_text=True)
