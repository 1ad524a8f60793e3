"""Bad input is refused before the database: each of issue 11's server errors, answered.

NUL bytes and control characters in text, idempotency keys longer than their column, ids
past the range of an INTEGER or BIGINT column (in URLs, forms and cursors), refund amounts
that are not numbers: each gets a 404 or the form again with the reason, and writes nothing.
"""

import re

import pytest
from sqlalchemy import func, select

from soma.extensions import db
from soma.models import (
    ClassSession,
    Gift,
    JournalEntry,
    Notification,
    Posting,
    Purchase,
    PurchaseReversal,
    User,
)
from soma.notifications import service as notifications
from soma.purchases import service
from tests.builders import fund, make_user
from tests.buying import buy, package_id
from tests.helpers import DEFAULT_PASSWORD, csrf_from, text_of

INT_OVER = 2**31  # one past an INTEGER column's range
BIGINT_OVER = 2**63  # one past a BIGINT column's range
WRITTEN = (User, JournalEntry, Posting, Purchase, ClassSession, Gift, PurchaseReversal)


def row_counts(app) -> dict[str, int]:
    """How many rows each table a request could write holds."""
    with app.app_context():
        return {
            model.__tablename__: db.session.scalar(select(func.count()).select_from(model))
            for model in WRITTEN
        }


def form_page(client, url: str) -> tuple[str, str]:
    """The page at `url` and its CSRF token."""
    page = client.get(url, follow_redirects=True).get_data(as_text=True)
    return page, csrf_from(page)


# Text: NUL and control characters, lengths from the columns ----------------------------


def test_a_nul_in_the_login_email_is_a_form_error(app, client):
    before = row_counts(app)
    _, token = form_page(client, "/login")
    response = client.post(
        "/login",
        data={"csrf_token": token, "email": "a\x00@example.com", "password": DEFAULT_PASSWORD},
    )
    assert response.status_code == 400
    assert "control characters" in text_of(response.get_data(as_text=True))
    assert row_counts(app) == before


@pytest.mark.parametrize("name", ["Amina\x00", "Amina\x07Otieno", "Amina\nOtieno", "A" * 81])
def test_a_sign_up_name_with_a_control_character_or_too_long_is_refused(app, client, name):
    before = row_counts(app)
    _, token = form_page(client, "/signup")
    response = client.post(
        "/signup",
        data={
            "csrf_token": token,
            "role": "student",
            "display_name": name,
            "email": "amina@example.com",
            "password": DEFAULT_PASSWORD,
            "confirm": DEFAULT_PASSWORD,
        },
    )
    assert response.status_code == 400
    shown = text_of(response.get_data(as_text=True))
    assert "control characters" in shown or "80 characters" in shown
    assert row_counts(app) == before


def test_a_nul_in_a_gift_note_is_refused_and_nothing_moves(app, client, auth):
    with app.app_context():
        make_user("student", email="friend@example.com")
    sender = auth.login_as("student")
    with app.app_context():
        fund(sender.id, 50)
    before = row_counts(app)
    _, token = form_page(client, "/gifts/new")
    response = client.post(
        "/gifts/review",
        data={"csrf_token": token, "email": "friend@example.com", "tokens": "5", "note": "hi\x00"},
    )
    assert response.status_code == 422
    assert "control characters" in text_of(response.get_data(as_text=True))
    response = client.post(
        "/gifts/confirm",
        data={
            "csrf_token": token,
            "email": "friend@example.com",
            "tokens": "5",
            "note": "hi\x00",
            "nonce": "n" * 24,
        },
    )
    assert response.status_code == 422
    assert row_counts(app) == before


def book(client, token: str, **fields):
    data = {
        "csrf_token": token,
        "teacher": "",
        "title": "Fractions",
        "start": "2026-11-24T10:00",
        "duration": "60",
        "key": "booking-key-1",
        **fields,
    }
    return client.post("/classes/new", data=data)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("title", "Fractions\x00", "control characters"),
        ("title", "F" * 121, "120 characters"),
        ("key", "k\x00ey", "Reload the page"),
        ("key", "k" * 201, "Reload the page"),
        ("teacher", str(INT_OVER), "Choose a teacher"),
        ("teacher", str(BIGINT_OVER), "Choose a teacher"),
        ("teacher", "-1", "Choose a teacher"),
    ],
)
def test_a_booking_with_bad_text_a_bad_key_or_a_teacher_out_of_range_is_refused(
    app, client, auth, clock, field, value, says
):
    with app.app_context():
        teacher_id = make_user("teacher").id
    auth.login_as("student")
    before = row_counts(app)
    _, token = form_page(client, "/classes/new")
    response = book(client, token, **{"teacher": str(teacher_id), field: value})
    assert response.status_code == 422
    assert says in text_of(response.get_data(as_text=True))
    assert row_counts(app) == before


@pytest.mark.parametrize("teacher", [str(INT_OVER), str(BIGINT_OVER), "-5", "1e3", "x", "\u00b2"])
def test_the_booking_page_ignores_a_teacher_out_of_range(app, client, auth, teacher):
    with app.app_context():
        teacher_id = make_user("teacher").id
    auth.login_as("student")
    chosen = client.get(f"/classes/new?teacher={teacher_id}").get_data(as_text=True)
    assert re.search(rf'<option selected value="{teacher_id}">', chosen)  # (a real one is)
    response = client.get("/classes/new", query_string={"teacher": teacher})
    assert response.status_code == 200
    assert '<option selected value="">Choose a teacher' in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"key": "buy\x00key"}, "Reload the page"),
        ({"key": "b" * 201}, "Reload the page"),
        ({"package": str(INT_OVER)}, "not on sale"),
        ({"package": str(BIGINT_OVER)}, "not on sale"),
        ({"package": "custom", "custom_tokens": str(BIGINT_OVER)}, "tokens"),
        ({"phone": "0712\x00345678"}, None),  # (no M-Pesa here: the field is not shown)
    ],
)
def test_a_purchase_with_a_bad_key_package_or_phone_is_refused(app, client, auth, fields, says):
    auth.login_as("student")
    before = row_counts(app)
    _, token = form_page(client, "/buy/")
    data = {
        "csrf_token": token,
        "package": str(package_id(app, 100)),
        "provider": "sandbox",
        "key": "buy-key-1",
        **fields,
    }
    response = client.post("/buy/", data=data)
    assert response.status_code == 422
    assert says is None or says in text_of(response.get_data(as_text=True))
    assert row_counts(app) == before


# Ids in URLs and cursors -----------------------------------------------------------------


@pytest.mark.parametrize("role", ["student", "teacher", "admin"])
@pytest.mark.parametrize("number", [INT_OVER, BIGINT_OVER, 10**30, 0])
def test_an_id_out_of_range_in_a_url_is_not_found(app, client, auth, role, number):
    auth.login_as(role)
    before = row_counts(app)
    _, token = form_page(client, "/")
    gets = [
        f"/classes/{number}",
        f"/classes/{number}/timer",
        f"/classes/{number}/panel",
        f"/buy/purchases/{number}",
        f"/buy/purchases/{number}/status",
        f"/buy/sandbox/{number}",
        f"/admin/purchases/{number}",
    ]
    posts = [
        f"/classes/{number}/start",
        f"/buy/sandbox/{number}/pay",
        f"/admin/purchases/{number}/refund",
        f"/admin/payments/unmatched/{number}/match",
    ]
    for url in gets:
        assert client.get(url).status_code in (403, 404), url
    for url in posts:
        assert client.post(url, data={"csrf_token": token}).status_code in (403, 404), url
    assert row_counts(app) == before


@pytest.mark.parametrize("before", [INT_OVER, BIGINT_OVER, -1, "9" * 40])
def test_admin_pages_ignore_a_cursor_out_of_range(app, client, auth, before):
    auth.login_as("admin")
    users = client.get(f"/admin/users?before={before}")
    purchases = client.get(f"/admin/purchases?before={before}")
    assert users.status_code == purchases.status_code == 200
    assert "Admin" in text_of(users.get_data(as_text=True))  # the first page, as if unsent


@pytest.mark.parametrize("up_to", [str(BIGINT_OVER), "-3", "0", "9" * 40, "abc", "", "\u00b2"])
def test_marking_notifications_read_with_a_cursor_out_of_range_marks_nothing(
    app, client, auth, up_to
):
    user = auth.login_as("student")
    with app.app_context():
        notifications.notify(user.id, "gift", "You received a gift.")
        db.session.commit()
    _, token = form_page(client, "/notifications/")
    response = client.post("/notifications/read", data={"csrf_token": token, "up_to": up_to})
    assert response.status_code in (302, 303, 400)
    with app.app_context():
        unread = db.session.scalar(
            select(func.count()).select_from(Notification).where(Notification.read_at.is_(None))
        )
        assert unread == 1


def test_a_sandbox_payment_out_of_range_is_not_found_and_pays_nothing(app, client, auth):
    auth.login_as("student")
    response = buy(client, package=package_id(app, 100))
    assert response.status_code == 303
    before = row_counts(app)
    _, token = form_page(client, "/buy/")
    for number in (INT_OVER, BIGINT_OVER):
        response = client.post(f"/buy/sandbox/{number}/pay", data={"csrf_token": token})
        assert response.status_code == 404
    assert row_counts(app) == before


# Decimals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount", ["sNaN", "NaN", "-sNaN", "Infinity", "-inf", "1e999999999", "1E-999999999", "5e0"]
)
def test_a_refund_amount_that_is_not_a_plain_number_is_a_form_error(app, client, auth, amount):
    with app.app_context():
        student = make_user("student")
        chosen = next(q for q in service.package_quotes() if q.tokens == 250)
        purchase = service.start(student, chosen, service.Provider.SANDBOX, f"p-{student.id}")
        service.fulfil(purchase.id, "sandbox")
        purchase_id = purchase.id
    auth.login_as("admin")
    before = row_counts(app)
    page = client.get(f"/admin/purchases/{purchase_id}").get_data(as_text=True)
    key = re.search(r'name="key" value="([^"]+)"', page).group(1)
    response = client.post(
        f"/admin/purchases/{purchase_id}/refund",
        data={"csrf_token": csrf_from(page), "amount": amount, "key": key},
    )
    assert response.status_code == 422
    assert "Enter the amount to refund" in text_of(response.get_data(as_text=True))
    assert row_counts(app) == before


@pytest.mark.parametrize("kind", [" ", "\x00", "nope", "²"])
def test_a_history_filter_of_no_known_type_is_dropped(app, client, auth, kind):
    auth.login_as("student")
    response = client.get("/wallet/history", query_string={"kind": kind, "cursor": "²"})
    assert response.status_code == 200
    assert "Transaction history" in text_of(response.get_data(as_text=True))
