"""Sessions end everywhere: log-out, a password change and `end_sessions` (an admin's
freeze) refuse every cookie the account had, replayed from another client; logged-in
pages are never stored by the browser."""

import pytest
from sqlalchemy import select

from soma.auth import service
from soma.extensions import db
from soma.models import User
from tests.builders import DEFAULT_PASSWORD, make_class, make_funded_user, make_user
from tests.conftest import AuthActions
from tests.helpers import csrf_from, post_form, text_of

NEW_PASSWORD = "plum-orchard-lantern"


def saved_cookie(client) -> str:
    """The session cookie as a browser (or a thief) would have kept it."""
    return client.get_cookie("session").value


def replay(app, cookie: str):
    """A fresh client that has only the saved cookie."""
    other = app.test_client()
    other.set_cookie("session", cookie)
    return other


def logged_in_as(client, user) -> bool:
    """Whether `client`'s session opens the user's home page, as that user."""
    response = client.get(f"/{user.role}")
    return response.status_code == 200 and user.display_name in response.get_data(as_text=True)


@pytest.fixture
def student(app, auth):
    return auth.login_as("student", name="Sam Student")


def change_password(client, current=DEFAULT_PASSWORD, new=NEW_PASSWORD, confirm=None):
    data = {"current": current, "password": new, "confirm": new if confirm is None else confirm}
    return post_form(client, "/account/password", data)


def test_a_cookie_saved_before_log_out_no_longer_opens_any_page(app, client, auth, student):
    cookie = saved_cookie(client)
    assert logged_in_as(replay(app, cookie), student)

    auth.logout()
    thief = replay(app, cookie)
    for page in ("/student", "/wallet/", "/wallet/history", "/account/password"):
        response = thief.get(page)
        assert response.status_code == 302, page
        assert response.location.startswith("/login"), page
    home = thief.get("/", follow_redirects=True).get_data(as_text=True)
    assert 'data-testid="nav-user"' not in home
    assert "Sam Student" not in home


def test_log_out_ends_the_sessions_of_every_device(app, client, auth, student):
    laptop = app.test_client()
    AuthActions(laptop).login(student.email)
    assert logged_in_as(laptop, student)

    auth.logout()  # on the phone
    assert not logged_in_as(laptop, student)
    assert not logged_in_as(client, student)
    # Logging in again starts a session that works.
    assert AuthActions(laptop).login(student.email).status_code == 302
    assert logged_in_as(laptop, student)


def test_a_password_change_ends_other_sessions_and_keeps_this_one(app, client, student):
    laptop = app.test_client()
    AuthActions(laptop).login(student.email)
    before_change = saved_cookie(client)

    response = change_password(client)
    assert response.status_code == 302
    home = client.get("/student", follow_redirects=True).get_data(as_text=True)
    assert "Your password is changed." in text_of(home)
    assert logged_in_as(client, student)  # this browser stays logged in
    assert not logged_in_as(laptop, student)
    assert not logged_in_as(replay(app, before_change), student)

    fresh = AuthActions(app.test_client())
    assert fresh.login(student.email, DEFAULT_PASSWORD).status_code == 400
    assert fresh.login(student.email, NEW_PASSWORD).status_code == 302
    with app.app_context():
        user = db.session.get(User, student.id)
        assert user.check_password(NEW_PASSWORD) and not user.check_password(DEFAULT_PASSWORD)


@pytest.mark.parametrize(
    ("current", "new", "confirm", "message"),
    [
        ("not-my-password", NEW_PASSWORD, None, "That is not your current password."),
        (DEFAULT_PASSWORD, "password12", None, "This password is too easy to guess."),
        (DEFAULT_PASSWORD, "1234567890", None, "This password is too easy to guess."),
        (DEFAULT_PASSWORD, "short", None, "Use at least 10 characters."),
        (DEFAULT_PASSWORD, NEW_PASSWORD, "plum-orchard-lanterns", "The two passwords differ."),
        (DEFAULT_PASSWORD, "sam student 1", None, "This password is too easy to guess."),
    ],
)
def test_a_refused_password_change_says_why_and_changes_nothing(
    app, client, student, current, new, confirm, message
):
    laptop = app.test_client()
    AuthActions(laptop).login(student.email)
    response = change_password(client, current, new, confirm)
    assert response.status_code == 400
    assert message in text_of(response.get_data(as_text=True))
    with app.app_context():
        assert db.session.get(User, student.id).check_password(DEFAULT_PASSWORD)
    assert logged_in_as(client, student) and logged_in_as(laptop, student)


def test_a_password_change_needs_the_csrf_token_and_a_session(app, client, student):
    data = {"current": DEFAULT_PASSWORD, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    assert client.post("/account/password", data=data).status_code == 400
    anonymous = app.test_client()
    response = post_form(anonymous, "/account/password", data, page="/login")
    assert response.status_code == 302 and response.location.startswith("/login")
    with app.app_context():
        assert db.session.get(User, student.id).check_password(DEFAULT_PASSWORD)


def test_wrong_current_passwords_count_as_failed_log_ins(app, client, student):
    """Whoever holds a session cannot guess the password through this form: its
    wrong guesses and the log-in form's share the account's count."""
    elsewhere = AuthActions(app.test_client())
    for _ in range(5):
        assert elsewhere.login(student.email, "guess-number-y").status_code == 400
        assert change_password(client, current="guess-number-x").status_code == 400
    paused = change_password(client, current=DEFAULT_PASSWORD)
    assert paused.status_code == 429
    assert "log-in to it is paused" in text_of(paused.get_data(as_text=True))
    with app.app_context():
        assert db.session.get(User, student.id).check_password(DEFAULT_PASSWORD)


def test_end_sessions_ends_every_session_of_that_account_only(app, client, student):
    """What an admin's freeze calls: the account's sessions end, no one else's."""
    other = app.test_client()
    someone = AuthActions(other).login_as("teacher", name="Tia Teacher")
    with app.app_context():
        service.end_sessions(db.session.get(User, student.id))
        assert db.session.scalar(select(User.session_version).where(User.id == student.id)) == 1
    assert not logged_in_as(client, student)
    assert logged_in_as(other, someone)


def test_the_class_timer_refuses_an_ended_session(app, client, auth, clock):
    """The timer reads the session version in its one query; an ended session is logged out."""
    with app.app_context():
        teacher = make_user("teacher")
        student = make_funded_user(100, email="tim@example.com")
        class_id = make_class(student, teacher).id
    auth.login("tim@example.com")
    cookie = saved_cookie(client)
    assert client.get(f"/classes/{class_id}/timer").status_code == 200
    auth.logout()

    response = replay(app, cookie).get(f"/classes/{class_id}/timer")
    assert response.status_code == 302 and response.location.startswith("/login")
    assert "Fractions" not in response.get_data(as_text=True)


def test_pages_of_a_logged_in_user_are_never_stored(app, client, auth):
    anonymous = client.get("/login")
    assert "no-store" not in anonymous.headers.get("Cache-Control", "")
    auth.login_as("student")
    for page in ("/student", "/wallet/", "/wallet/history", "/notifications/", "/account/password"):
        response = client.get(page)
        assert response.status_code == 200, page
        assert response.headers["Cache-Control"] == "no-store", page
    # So is an error page shown to them, and an htmx fragment.
    assert client.get("/classes/999999").headers["Cache-Control"] == "no-store"
    # The site's own CSS and scripts stay cacheable.
    static = client.get("/static/css/soma.css")
    assert "no-store" not in static.headers.get("Cache-Control", "")
    static.close()


def test_a_session_made_before_session_versions_is_logged_out(app, client, student):
    """A cookie without the version (made before this release) counts as ended."""
    with client.session_transaction() as session:
        session.pop("_session_version")
    assert not logged_in_as(client, student)
    assert csrf_from(client.get("/login").get_data(as_text=True))


def test_a_form_shown_as_an_ended_session_is_found_still_works(app, client, auth, student):
    """Ending the session there keeps its CSRF token: a form on that page works."""
    cookie = saved_cookie(client)
    auth.logout()
    browser = replay(app, cookie)
    page = browser.get("/no-such-page")
    assert page.status_code == 404
    assert 'data-testid="nav-user"' not in page.get_data(as_text=True)
    token = csrf_from(page.get_data(as_text=True))
    response = browser.post(
        "/login", data={"email": student.email, "password": DEFAULT_PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 302
    assert logged_in_as(browser, student)
