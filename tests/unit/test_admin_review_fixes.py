"""What an adversarial review of the console found, each fixed: a refund whose webhook came
first is still recorded, a frozen teacher's withdrawal is not approved, an admin's abort of a
class is confirmed and recorded, and odd values do not break the action log or health."""

import re
from datetime import timedelta

from sqlalchemy import select

from soma.admin import actions
from soma.auth import freeze
from soma.extensions import db
from soma.models import AdminAction, ClassSession, User
from soma.payouts import withdrawals as withdrawal_service
from soma.purchases import reversals
from tests.builders import fund, make_class, make_teacher, make_user, payout_method
from tests.buying import checkout, post_event
from tests.fakes.stripe_server import event
from tests.helpers import balances, confirm_post, csrf_from, text_of


def records() -> list[tuple[str, str, int]]:
    return [
        (row.action, row.object_type, row.object_id)
        for row in db.session.scalars(select(AdminAction).order_by(AdminAction.id))
    ]


def test_a_refund_reported_first_by_its_webhook_is_still_recorded_once(
    app, client, auth, stripe_on, monkeypatch
):
    auth.login_as("student")
    purchase_id, session_id = checkout(app, client)
    paid = stripe_on.pay(session_id)
    assert post_event(client, event("checkout.session.completed", paid)).status_code == 200
    auth.logout()
    auth.login_as("admin")
    report = reversals.report

    def webhook_first(purchase_id, ref, status, amount, source, made_at=None, on_report=None):
        # Stripe's refund.created is handled between the admin's Stripe call and its report.
        report(purchase_id, ref, status, amount, "stripe:evt_refund_created")
        return report(purchase_id, ref, status, amount, source, made_at, on_report=on_report)

    monkeypatch.setattr(reversals, "report", webhook_first)
    page = client.get(f"/admin/purchases/{purchase_id}").get_data(as_text=True)
    key = re.search(r'name="key" value="([^"]+)"', page).group(1)
    form = {"csrf_token": csrf_from(page), "amount": "4.00", "key": key}
    assert confirm_post(client, f"/admin/purchases/{purchase_id}/refund", form).status_code == 303
    # The form sent again: the same refund at Stripe, and no second record.
    assert confirm_post(client, f"/admin/purchases/{purchase_id}/refund", form).status_code == 303
    with app.app_context():
        found = reversals.reversals_of(purchase_id)
        assert [(r.amount_minor, r.status) for r in found] == [(400, "succeeded")]
        assert records() == [("refund", "purchase", purchase_id)]
        after = actions.values(db.session.scalars(select(AdminAction.after)).one())
        assert (after["refund_minor"], after["refund_ref"]) == (400, found[0].provider_ref)
        assert len(stripe_on.refunds()) == 1


def test_a_frozen_teachers_withdrawal_cannot_be_approved(app, client, auth, clock):
    with app.app_context():
        teacher = make_teacher(1000)
        method = payout_method(teacher, "bank", now=clock.now - timedelta(days=2))
        withdrawal = withdrawal_service.request(teacher, method.id, 2000, "bank-2000")
        teacher_id, withdrawal_id = teacher.id, withdrawal.id
        freeze.freeze(make_user("admin"), teacher_id, "chargebacks")
        held = balances(teacher_id)
    auth.login_as("admin")
    url = f"/admin/withdrawals/{withdrawal_id}"
    page = client.get(url).get_data(as_text=True)
    assert 'data-testid="teacher-frozen"' in page
    refused = client.post(f"{url}/approve", data={"csrf_token": csrf_from(page)})
    assert refused.status_code == 409
    assert "account is frozen" in text_of(refused.get_data(as_text=True))
    # Posted as if confirmed: the service refuses it all the same.
    forced = client.post(f"{url}/approve", data={"csrf_token": csrf_from(page), "confirmed": "yes"})
    assert forced.status_code == 409
    with app.app_context():
        assert withdrawal_service.fresh(withdrawal_id).status == "requested"
        assert balances(teacher_id) == held
        assert [row[0] for row in records()] == ["freeze"]


def test_an_admins_abort_of_a_class_is_confirmed_and_recorded(app, client, auth, clock):
    with app.app_context():
        student, teacher = make_user("student"), make_user("teacher")
        fund(student.id, 100)
        session = make_class(student, teacher, "in_progress")
        class_id, student_id = session.id, student.id
        assert balances(student_id) == (90, 10)
    clock.advance(minutes=15)
    admin = auth.login_as("admin")
    page = client.get(f"/classes/{class_id}").get_data(as_text=True)
    assert "hx-post" not in page.split('data-testid="control-abort"')[0].rsplit("<form", 1)[1]
    asked = client.post(f"/classes/{class_id}/abort", data={"csrf_token": csrf_from(page)})
    assert asked.status_code == 200 and 'data-testid="admin-confirm"' in asked.get_data(
        as_text=True
    )
    with app.app_context():
        assert db.session.get(ClassSession, class_id).status == "in_progress"
        assert records() == []
    done = confirm_post(client, f"/classes/{class_id}/abort", {"csrf_token": csrf_from(page)})
    assert done.status_code == 303
    with app.app_context():
        assert db.session.get(ClassSession, class_id).status == "aborted"
        assert balances(student_id) == (100, 0)
        row = db.session.scalars(select(AdminAction)).one()
        assert (row.admin_id, row.action, row.object_type, row.object_id) == (
            admin.id,
            "abort_class",
            "class",
            class_id,
        )
        assert actions.values(row.after) == {"status": "aborted", "charged_tokens": 0}
    log = text_of(client.get("/admin/actions").get_data(as_text=True))
    assert "Aborted a class" in log


def test_a_reason_shaped_like_a_time_does_not_break_the_action_log(app, client, auth):
    with app.app_context():
        student_id = make_user("student").id
    auth.login_as("admin")
    page = client.get(f"/admin/users/{student_id}").get_data(as_text=True)
    reason = "0001-01-01T00:00:00+14:00"
    frozen = confirm_post(
        client,
        f"/admin/users/{student_id}/freeze",
        {"csrf_token": csrf_from(page), "reason": reason},
    )
    assert frozen.status_code == 303
    log = client.get("/admin/actions")
    assert log.status_code == 200
    assert "Froze an account" in text_of(log.get_data(as_text=True))
    with app.app_context():
        assert db.session.get(User, student_id).frozen_reason == reason


def test_health_names_a_rate_limit_store_of_several_hosts_without_its_password(app, client, auth):
    auth.login_as("admin")
    app.config["RATELIMIT_STORAGE_URI"] = "redis+sentinel://:secret-pw@h1:26379,h2:26379/main"
    page = client.get("/admin/health")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "redis+sentinel://h1:26379,h2:26379/main" in html
    assert "secret-pw" not in html
