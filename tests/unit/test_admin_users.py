"""The operator's users: search, paging, the account page, freeze and unfreeze through
their confirmation step, and the role matrix of every page and form."""

import html
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from soma import alerts
from soma.admin import users as users_module
from soma.extensions import db
from soma.models import AdminAction, Notification, User
from tests.builders import (
    fund,
    make_class,
    make_user,
    make_withdrawal,
    paid_purchase,
    payout_method,
)
from tests.conftest import AuthActions
from tests.helpers import csrf_from, hidden_fields
from tests.helpers import text_of as tagless


def text_of(page: str) -> str:
    return html.unescape(tagless(page))


@pytest.fixture
def admin(app, client, auth):
    return auth.login_as("admin", email="ada@example.com", name="Ada Admin")


@pytest.fixture
def people(app, clock):
    with app.app_context():
        student = make_user("student", email="sam.otieno@example.com", name="Sam Otieno")
        teacher = make_user("teacher", email="tara@example.com", name="Tara Wanjiru")
        other = make_user("student", email="zed@example.org", name="Zed 100% Real")
        return {"student": student.id, "teacher": teacher.id, "other": other.id}


def listed(response) -> list[str]:
    """The emails of the rows the users page lists, in order."""
    page = response.get_data(as_text=True)
    table = page.split('data-testid="admin-users"')[1].split("</tbody>")[0]
    return re.findall(r"<td[^>]*>([^<@]+@[^<]+)</td>", table)


def test_search_by_email_or_name_any_case_and_part(client, admin, people):
    assert listed(client.get("/admin/users?q=OTIENO")) == ["sam.otieno@example.com"]
    assert listed(client.get("/admin/users?q=wanj")) == ["tara@example.com"]
    assert listed(client.get("/admin/users?q=example.org")) == ["zed@example.org"]
    assert set(listed(client.get("/admin/users?q=example.com"))) == {
        "sam.otieno@example.com",
        "tara@example.com",
        "ada@example.com",
    }
    assert listed(client.get("/admin/users?q=example.com&role=teacher")) == ["tara@example.com"]
    # LIKE's wildcards are taken literally.
    assert listed(client.get("/admin/users?q=100%25")) == ["zed@example.org"]
    assert listed(client.get("/admin/users?q=___")) == []
    # An account number finds its account, even when shorter than three characters.
    assert listed(client.get(f"/admin/users?q={people['teacher']}")) == ["tara@example.com"]
    page = text_of(client.get("/admin/users?q=nobody-here").get_data(as_text=True))
    assert "No account matches “nobody-here”." in page


@pytest.mark.parametrize(
    "q,message",
    [
        ("ab", "Type at least 3 characters of an email or a name."),
        ("x" * 10_000, "Keep the search to 254 characters or fewer."),
        ("sam\x00", "Remove the control characters"),
    ],
)
def test_a_bad_search_is_refused_on_the_page(client, admin, people, q, message):
    response = client.get("/admin/users", query_string={"q": q})
    assert response.status_code == 400
    page = text_of(response.get_data(as_text=True))
    assert message in page
    assert listed(response) == []


def test_pages_go_by_id_newest_first_and_keep_the_search_and_filter(
    app, client, admin, monkeypatch
):
    monkeypatch.setattr(users_module, "USERS_PER_PAGE", 2)
    with app.app_context():
        made = [make_user("student", email=f"pager{n}@example.com").id for n in range(5)]
        make_user("teacher", email="pager-teacher@example.com")
    response = client.get("/admin/users?q=pager&role=student")
    assert listed(response) == ["pager4@example.com", "pager3@example.com"]
    seen = listed(response)
    while "Older users" in response.get_data(as_text=True):
        link = html.unescape(
            re.search(
                r'href="([^"]+)"[^>]*data-testid="older-users"', response.get_data(as_text=True)
            ).group(1)
        )
        assert "q=pager" in link and "role=student" in link
        response = client.get(link)
        seen += listed(response)
    assert seen == [f"pager{n}@example.com" for n in reversed(range(5))]
    assert made == sorted(made)


def test_the_account_page_shows_its_money_classes_flags_alerts_and_actions(
    app, client, admin, people, clock
):
    with app.app_context():
        student = db.session.get(User, people["student"])
        teacher = db.session.get(User, people["teacher"])
        purchase = paid_purchase(student, package_tokens=100)
        make_class(student, teacher, "completed")
        fund(teacher.id, 300)
        method = payout_method(teacher, now=clock() - timedelta(days=1))
        withdrawal = make_withdrawal(teacher, 1000, method)
        alerts.raise_alert(
            "purchases-per-hour", "test:rate:1", "Six purchases in an hour.", user_id=student.id
        )
        db.session.commit()
        purchase_id, withdrawal_id = purchase.id, withdrawal.id

    page = text_of(client.get(f"/admin/users/{people['student']}").get_data(as_text=True))
    assert "Sam Otieno" in page and "sam.otieno@example.com" in page
    assert "Available 90 tokens Locked 0 tokens Worth $9.00 at the student rate" in page
    assert "Bought 100 tokens for $10.00" in page  # the history
    assert f"{purchase_id} " in page and "Paid" in page
    assert "Fractions" in page and "Tara Wanjiru" in page and "Completed" in page
    assert "purchases-per-hour : Six purchases in an hour. open" in page
    assert "Frozen No" in page and "Flag None" in page
    assert "No admin has acted on this account." in page
    assert "Freeze the account" in page

    page = client.get(f"/admin/users/{people['teacher']}").get_data(as_text=True)
    assert f'href="/admin/withdrawals/{withdrawal_id}"' in page
    assert f'href="/admin/purchases/{purchase_id}"' not in page
    text = text_of(page)
    assert "Available 60 tokens Locked 250 tokens" in text and "at the teacher rate" in text


def freeze_through_the_pages(client, user_id: int, reason: str, action: str = "freeze"):
    """Post the form, then press the confirmation's button: the two POSTs an admin makes."""
    page = client.get(f"/admin/users/{user_id}").get_data(as_text=True)
    first = client.post(
        f"/admin/users/{user_id}/{action}", data={"csrf_token": csrf_from(page), "reason": reason}
    )
    return first, client.post(f"/admin/users/{user_id}/{action}", data=hidden_fields(
        first.get_data(as_text=True).split('data-testid="admin-confirm"')[1]))  # fmt: skip


def test_freeze_and_unfreeze_go_through_their_confirmation(app, client, admin, people):
    student = app.test_client()
    assert AuthActions(student).login("sam.otieno@example.com").status_code == 302

    first, confirmed = freeze_through_the_pages(client, people["student"], "Card chargebacks")

    shown = text_of(first.get_data(as_text=True))
    assert first.status_code == 200
    assert "Freeze Sam Otieno's account?" in shown and "Card chargebacks" in shown
    assert confirmed.status_code == 303
    page = text_of(client.get(confirmed.location).get_data(as_text=True))
    assert "Sam Otieno's account is frozen, and their sessions are ended." in page
    assert "by Ada Admin: Card chargebacks" in page
    assert "Ada Admin · freeze : Card chargebacks" in page
    assert "frozen" in text_of(client.get("/admin/users?q=otieno").get_data(as_text=True))
    assert "/login" in student.get("/student").location

    # Freezing again is refused on the page, before any confirmation; nothing is recorded.
    page = client.get(f"/admin/users/{people['student']}").get_data(as_text=True)
    again = client.post(
        f"/admin/users/{people['student']}/freeze",
        data={"csrf_token": csrf_from(page), "reason": "Twice"},
    )
    assert again.status_code == 409
    assert "This account is already frozen" in text_of(again.get_data(as_text=True))

    first, confirmed = freeze_through_the_pages(
        client, people["student"], "Bank cleared it", "unfreeze"
    )
    assert "Unfreeze Sam Otieno's account?" in text_of(first.get_data(as_text=True))
    assert confirmed.status_code == 303
    with app.app_context():
        records = db.session.scalars(select(AdminAction).order_by(AdminAction.id)).all()
        assert [(r.action, r.reason) for r in records] == [
            ("freeze", "Card chargebacks"),
            ("unfreeze", "Bank cleared it"),
        ]
        assert db.session.get(User, people["student"]).frozen_at is None
        kinds = db.session.scalars(
            select(Notification.kind).where(Notification.user_id == people["student"])
        ).all()
        assert sorted(kinds) == ["account_frozen", "account_unfrozen"]


def test_the_first_post_changes_nothing_and_a_bad_reason_is_refused(app, client, admin, people):
    page = client.get(f"/admin/users/{people['student']}").get_data(as_text=True)
    token = csrf_from(page)
    url = f"/admin/users/{people['student']}/freeze"
    assert client.post(url, data={"csrf_token": token, "reason": "Why not"}).status_code == 200
    for reason, message in [
        ("", "Say why the account is frozen."),
        ("   ", "Say why the account is frozen."),
        ("a\x00b", "Remove the control characters"),
        ("r" * 301, "Keep the reason to 300 characters or fewer."),
    ]:
        response = client.post(
            url, data={"csrf_token": token, "reason": reason, "confirmed": "yes"}
        )
        assert response.status_code == 422
        assert message in text_of(response.get_data(as_text=True))
    assert client.post(url, data={"reason": "No token", "confirmed": "yes"}).status_code == 400
    with app.app_context():
        assert db.session.get(User, people["student"]).frozen_at is None
        assert db.session.scalar(select(func.count()).select_from(AdminAction)) == 0


def test_admins_cannot_freeze_themselves_or_other_admins(app, client, admin):
    with app.app_context():
        colleague = make_user("admin", name="Cy Colleague").id
    for target in (admin.id, colleague):
        page = client.get(f"/admin/users/{target}").get_data(as_text=True)
        assert "Admin accounts cannot be frozen here." in text_of(page)
        response = client.post(
            f"/admin/users/{target}/freeze",
            data={"csrf_token": csrf_from(page), "reason": "Test", "confirmed": "yes"},
        )
        assert response.status_code == 409
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(AdminAction)) == 0
        assert db.session.scalar(select(func.count()).where(User.frozen_at.is_not(None))) == 0


def test_an_unknown_account_is_404(client, admin, people):
    for path in ("/admin/users/999999", f"/admin/users/{2**31}", "/admin/users/0"):
        assert client.get(path).status_code == 404
    page = client.get(f"/admin/users/{people['student']}").get_data(as_text=True)
    response = client.post(
        "/admin/users/999999/freeze", data={"csrf_token": csrf_from(page), "reason": "x"}
    )
    assert response.status_code == 404


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_students_and_teachers_get_403_on_every_page_and_form(app, client, auth, people, role):
    auth.login_as(role)
    page = client.get("/wallet/").get_data(as_text=True)
    token = csrf_from(page)
    for path in ("/admin/users", "/admin/users?q=sam", f"/admin/users/{people['student']}"):
        response = client.get(path)
        assert response.status_code == 403
        assert "Your account does not have access to this page." in text_of(
            response.get_data(as_text=True)
        )
    for action in ("freeze", "unfreeze"):
        response = client.post(
            f"/admin/users/{people['other']}/{action}",
            data={"csrf_token": token, "reason": "Me", "confirmed": "yes"},
        )
        assert response.status_code == 403
    with app.app_context():
        assert db.session.get(User, people["other"]).frozen_at is None
        assert db.session.scalar(select(func.count()).select_from(AdminAction)) == 0
