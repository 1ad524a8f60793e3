"""Alerts on PostgreSQL: admins acknowledging one alert at once make one acknowledgement
and one record; sweepers raising at once make one alert per cause."""

from sqlalchemy import func, select

from soma import ledger
from soma.admin import actions
from soma.admin.alert_pages import acknowledge
from soma.alert_rules import raise_alerts
from soma.alerts import raise_alert
from soma.extensions import db
from soma.models import AdminAction, Alert, User, utcnow
from tests.builders import make_funded_user, make_user
from tests.conftest import AuthActions
from tests.helpers import csrf_from, ok, race


def an_alert(app) -> int:
    with app.app_context():
        student = make_user("student")
        raise_alert("refund", "refund:1", "A refund of $2.00.", user_id=student.id)
        db.session.commit()
        return db.session.scalar(select(Alert.id))


def test_five_admins_acknowledging_at_once_make_one_acknowledgement(app, wide_app):
    alert_id = an_alert(app)
    with app.app_context():
        admin_ids = [make_user("admin").id for _ in range(5)]

    def acknowledge_as(admin_id: int) -> bool:
        return acknowledge(alert_id, db.session.get(User, admin_id))

    outcomes = race(wide_app, [lambda a=a: acknowledge_as(a) for a in admin_ids])
    assert sorted(ok(outcomes)) == [False, False, False, False, True]
    with app.app_context():
        alert = db.session.get(Alert, alert_id)
        (record,) = db.session.scalars(select(AdminAction)).all()
        assert record.admin_id == alert.acknowledged_by_id
        assert alert.acknowledged_by_id in admin_ids
        assert actions.values(record.after)["acknowledged_at"] == alert.acknowledged_at.isoformat()


def test_two_admins_confirming_at_once_through_the_page_make_one_record(app, wide_app):
    alert_id = an_alert(app)
    posts = []
    for name in ("Ada Admin", "Bea Admin"):
        client = wide_app.test_client()
        user = AuthActions(client).login_as("admin", name=name)
        token = csrf_from(client.get("/admin/alerts").get_data(as_text=True))
        posts.append((client, token, user.id))

    def confirm(client, token):
        return client.post(
            f"/admin/alerts/{alert_id}/acknowledge",
            data={"csrf_token": token, "confirmed": "yes"},
            follow_redirects=True,
        ).get_data(as_text=True)

    outcomes = race(wide_app, [lambda c=c, t=t: confirm(c, t) for c, t, _ in posts])
    pages = ok(outcomes)
    assert sum(f"Alert #{alert_id} acknowledged." in page for page in pages) == 1
    assert sum("was already acknowledged by" in page for page in pages) == 1
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(AdminAction)) == 1
        alert = db.session.get(Alert, alert_id)
        assert alert.acknowledged_by_id in {admin_id for _, _, admin_id in posts}


def test_sweepers_raising_at_once_make_one_alert_per_cause(app, wide_app):
    with app.app_context():
        cost = ledger.class_cost(60)
        students = [make_funded_user(cost).id for _ in range(4)]
        receiver = make_user("student").id
        for student in students:
            with ledger.atomic():
                ledger.transfer(student, receiver, 1, key=f"pg:gift:{student}")
    outcomes = race(wide_app, [lambda: raise_alerts(utcnow()) for _ in range(3)])
    assert sum(ok(outcomes)) == 4 and len(ok(outcomes)) == 3  # (no worker failed)
    with app.app_context():
        causes = db.session.scalars(select(Alert.cause)).all()
        assert len(causes) == len(set(causes)) == 4
        assert {a.user_id for a in db.session.scalars(select(Alert))} == set(students)
