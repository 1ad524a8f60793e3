"""The alerts page: open alerts first, newest first, filtered and paged; acknowledging one
after a confirmation, once, recorded in admin_actions; the navigation's open count."""

import re

import pytest
from sqlalchemy import func, select

from soma.admin import actions
from soma.alerts import raise_alert
from soma.extensions import db
from soma.models import AdminAction, Alert
from tests.builders import make_user, paid_purchase
from tests.helpers import csrf_from, hidden_fields, text_of


def raise_some(student_id: int, purchase_id: int) -> list[int]:
    raise_alert(
        "refund",
        f"refund:{purchase_id}",
        f"A refund of $2.00 on purchase #{purchase_id} (refunded).",
        user_id=student_id,
        object_type="purchase",
        object_id=purchase_id,
    )
    raise_alert(
        "mpesa-unmatched",
        "mpesa-unmatched:1",
        "M-Pesa payment TST1 of KES 650 matches no purchase.",
        object_type="unmatched_payment",
        object_id=1,
    )
    raise_alert(
        "low-balance",
        f"low-balance:{student_id}:99",
        "Sam Student has 4 tokens available, less than one hour of class (10 tokens).",
        user_id=student_id,
        object_type="user",
        object_id=student_id,
    )
    db.session.commit()
    return list(db.session.scalars(select(Alert.id).order_by(Alert.id)))


@pytest.fixture
def raised(app):
    with app.app_context():
        student = make_user("student", name="Sam Student")
        purchase = paid_purchase(student, tokens=50)
        ids = raise_some(student.id, purchase.id)
        return {"student": student.id, "purchase": purchase.id, "ids": ids}


def nav_count(html: str) -> int | None:
    found = re.search(r'data-testid="nav-alerts-count">(\d+)<', html)
    return int(found.group(1)) if found else None


def rows_of(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'data-testid="alert-(\d+)"', html)]


def acknowledge(client, alert_id: int):
    """The admin's two POSTs: the form on the page, then its confirmation."""
    page = client.get("/admin/alerts").get_data(as_text=True)
    asked = client.post(
        f"/admin/alerts/{alert_id}/acknowledge", data={"csrf_token": csrf_from(page)}
    )
    assert asked.status_code == 200
    confirm = asked.get_data(as_text=True)
    assert "Acknowledge this alert?" in confirm
    fields = hidden_fields(confirm)
    assert fields["confirmed"] == "yes"
    return client.post(f"/admin/alerts/{alert_id}/acknowledge", data=fields)


def test_the_page_lists_open_alerts_newest_first_with_links(client, auth, raised):
    auth.login_as("admin")
    response = client.get("/admin/alerts")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert rows_of(html) == list(reversed(raised["ids"]))
    text = text_of(html)
    assert "Refund" in text and "Unmatched M-Pesa payment" in text and "Low balance" in text
    assert f"A refund of $2.00 on purchase #{raised['purchase']} (refunded)." in text
    assert f'href="/admin/purchases/{raised["purchase"]}">Purchase #{raised["purchase"]}' in html
    assert 'href="/admin/payments/unmatched">Unmatched payments' in html
    assert ">Sam Student</a>" in html
    assert nav_count(html) == 3
    assert 'aria-label="Alerts, 3 open"' in html


def test_acknowledging_asks_first_then_records_it_once_and_the_count_falls(
    app, client, auth, raised
):
    admin = auth.login_as("admin", name="Ada Admin")
    first = raised["ids"][0]
    page = client.get("/admin/alerts").get_data(as_text=True)
    asked = client.post(f"/admin/alerts/{first}/acknowledge", data={"csrf_token": csrf_from(page)})
    assert "Acknowledge this alert?" in asked.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(Alert, first).is_open  # (only asked)
        assert db.session.scalar(select(func.count()).select_from(AdminAction)) == 0
    done = client.post(
        f"/admin/alerts/{first}/acknowledge", data=hidden_fields(asked.get_data(as_text=True))
    )
    assert done.status_code == 303 and done.headers["Location"].endswith("/admin/alerts")
    with app.app_context():
        alert = db.session.get(Alert, first)
        assert alert.acknowledged_by_id == admin.id and alert.acknowledged_at is not None
        (record,) = db.session.scalars(select(AdminAction)).all()
        assert (record.admin_id, record.action, record.object_type, record.object_id) == (
            admin.id,
            "acknowledge_alert",
            "alert",
            first,
        )
        assert actions.values(record.before) == {
            "acknowledged_at": None,
            "acknowledged_by_id": None,
        }
        after = actions.values(record.after)
        assert after["acknowledged_by_id"] == admin.id
        assert after["acknowledged_at"] == alert.acknowledged_at.isoformat()
    html = client.get("/admin/alerts").get_data(as_text=True)
    assert f"Alert #{first} acknowledged." in text_of(html)
    assert nav_count(html) == 2
    assert first not in rows_of(html)
    shown = client.get("/admin/alerts?status=acknowledged").get_data(as_text=True)
    assert rows_of(shown) == [first]
    assert "Ada Admin," in text_of(shown)
    # Again (a second tab): nothing more, and it says who did it.
    again = client.post(
        f"/admin/alerts/{first}/acknowledge",
        data={"csrf_token": csrf_from(html), "confirmed": "yes"},
        follow_redirects=True,
    )
    assert f"Alert #{first} was already acknowledged by Ada Admin." in text_of(
        again.get_data(as_text=True)
    )
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(AdminAction)) == 1


def test_a_new_cause_after_an_acknowledgement_is_a_new_open_alert(app, client, auth, raised):
    auth.login_as("admin")
    assert acknowledge(client, raised["ids"][2]).status_code == 303
    with app.app_context():
        assert not raise_alert("low-balance", f"low-balance:{raised['student']}:99", "Again")
        assert raise_alert("low-balance", f"low-balance:{raised['student']}:120", "Fell again")
        db.session.commit()
    html = client.get("/admin/alerts?rule=low-balance").get_data(as_text=True)
    assert len(rows_of(html)) == 1 and "Fell again" in html
    assert nav_count(html) == 3


def test_filters_by_status_and_rule_and_ignores_unknown_values(client, auth, raised):
    auth.login_as("admin")
    refund_only = client.get("/admin/alerts?rule=refund").get_data(as_text=True)
    assert rows_of(refund_only) == [raised["ids"][0]]
    assert rows_of(client.get("/admin/alerts?status=acknowledged").get_data(as_text=True)) == []
    for query in ("?status=nonsense", "?rule=%00x", "?rule=" + "x" * 300, "?before=-1",
                  "?before=" + str(2**63), "?part=nonsense"):  # fmt: skip
        response = client.get("/admin/alerts" + query)
        assert response.status_code == 200
        assert rows_of(response.get_data(as_text=True)) == list(reversed(raised["ids"]))


def test_all_shows_open_alerts_first_and_pages_through_both_by_id(app, client, auth):
    admin = auth.login_as("admin")
    with app.app_context():
        for number in range(1, 71):
            raise_alert("refund", f"refund:{number}", f"Refund {number}")
        db.session.commit()
        ids = list(db.session.scalars(select(Alert.id).order_by(Alert.id)))
        acked = set(ids[::3])  # every third: acknowledged
        for alert_id in acked:
            alert = db.session.get(Alert, alert_id)
            alert.acknowledged_at, alert.acknowledged_by_id = alert.raised_at, admin.id
        db.session.commit()
    seen, url = [], "/admin/alerts?status=all"
    while url:
        html = client.get(url).get_data(as_text=True)
        seen += rows_of(html)
        more = re.search(r'href="([^"]*)" role="button"[^>]*>More alerts', html)
        url = more.group(1).replace("&amp;", "&") if more else None
    open_ids = sorted(set(ids) - acked, reverse=True)
    assert seen == open_ids + sorted(acked, reverse=True)


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_students_and_teachers_get_403_and_change_nothing(app, client, auth, raised, role):
    auth.login_as(role)
    page = client.get("/admin/alerts")
    assert page.status_code == 403
    assert "Refund" not in page.get_data(as_text=True)
    home = client.get("/dashboard", follow_redirects=True).get_data(as_text=True)
    assert 'data-testid="nav-alerts"' not in home
    posted = client.post(
        f"/admin/alerts/{raised['ids'][0]}/acknowledge",
        data={"csrf_token": csrf_from(home), "confirmed": "yes"},
    )
    assert posted.status_code == 403
    with app.app_context():
        assert all(alert.is_open for alert in db.session.scalars(select(Alert)))
        assert db.session.scalar(select(func.count()).select_from(AdminAction)) == 0


def test_a_bad_alert_id_is_404_and_an_acknowledgement_without_csrf_is_400(
    app, client, auth, raised
):
    auth.login_as("admin")
    html = client.get("/admin/alerts").get_data(as_text=True)
    token = csrf_from(html)
    for bad in ("999999", str(2**63), "0", "-1", "x"):
        response = client.post(
            f"/admin/alerts/{bad}/acknowledge", data={"csrf_token": token, "confirmed": "yes"}
        )
        assert response.status_code == 404, bad
    first = raised["ids"][0]
    for data in ({"confirmed": "yes"}, {"csrf_token": "forged", "confirmed": "yes"}):
        assert client.post(f"/admin/alerts/{first}/acknowledge", data=data).status_code == 400
    with app.app_context():
        assert db.session.get(Alert, first).is_open
        assert db.session.scalar(select(func.count()).select_from(AdminAction)) == 0


def test_a_page_of_exactly_all_the_open_alerts_offers_no_empty_next_page(app, client, auth):
    auth.login_as("admin")
    with app.app_context():
        for number in range(1, 51):
            raise_alert("refund", f"refund:{number}", f"Refund {number}")
        db.session.commit()
    html = client.get("/admin/alerts?status=all").get_data(as_text=True)
    assert len(rows_of(html)) == 50
    assert "More alerts" not in html
