"""Sign-up, log-in and log-out, as a user sees them and as they are stored."""

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from soma.extensions import db
from soma.models import User
from tests.builders import DEFAULT_PASSWORD, make_user
from tests.helpers import post_form


def count_users() -> int:
    return db.session.scalar(select(func.count()).select_from(User))


def test_signup_creates_a_student_logs_in_and_hashes_the_password(app, client, auth):
    response = auth.signup(email="  Ada@Example.COM ", name="Ada Lovelace", role="student")
    assert response.status_code == 302
    assert response.headers["Location"] == "/dashboard"

    home = client.get("/dashboard", follow_redirects=True)
    page = home.get_data(as_text=True)
    assert "Hello, Ada Lovelace" in page
    assert "Welcome to Soma, Ada Lovelace!" in page
    assert 'data-testid="nav-user"' in page

    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "ada@example.com"))
        assert user.role == "student"
        assert user.display_name == "Ada Lovelace"
        assert DEFAULT_PASSWORD not in user.password_hash
        assert user.check_password(DEFAULT_PASSWORD)
        assert not user.check_password("wrong-password-1")


def test_signup_as_teacher_lands_on_the_teacher_home(client, auth):
    auth.signup(email="tess@example.com", name="Tess Teacher", role="teacher")
    page = client.get("/dashboard", follow_redirects=True).get_data(as_text=True)
    assert "Teach live classes" in page
    assert "Tess Teacher" in page


def test_signup_never_makes_an_admin(app, client):
    response = post_form(
        client,
        "/signup",
        {
            "email": "sneaky@example.com",
            "display_name": "Sneaky",
            "role": "admin",
            "password": DEFAULT_PASSWORD,
            "confirm": DEFAULT_PASSWORD,
        },
    )
    assert response.status_code == 400
    assert "Not a valid choice" in response.get_data(as_text=True)
    with app.app_context():
        assert count_users() == 0


def test_duplicate_email_is_a_form_error_and_stores_nothing(app, client, auth):
    with app.app_context():
        make_user("teacher", email="taken@example.com")
    response = auth.signup(email="TAKEN@example.com", name="Second")
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "An account with this email already exists" in page
    assert 'aria-invalid="true"' in page
    with app.app_context():
        assert count_users() == 1
        assert db.session.scalar(select(User.display_name)) != "Second"


def test_short_password_is_a_form_error_and_stores_nothing(app, auth):
    response = auth.signup(email="short@example.com", password="123456789")
    assert response.status_code == 400
    assert "Use at least 10 characters." in response.get_data(as_text=True)
    with app.app_context():
        assert count_users() == 0


def test_signup_form_errors_for_bad_email_missing_name_and_mismatch(app, auth):
    response = auth.signup(email="not-an-email", name="", confirm="something-else-entirely")
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "Enter a valid email address." in page
    assert "Tell us your name." in page
    assert "The two passwords differ." in page
    with app.app_context():
        assert count_users() == 0


def test_signup_login_and_healthz(app, client, auth):
    response = auth.signup(email="pg@example.com", name="Pat Postgres", role="teacher")
    assert response.status_code == 302
    assert "Pat Postgres" in client.get("/teacher").get_data(as_text=True)
    auth.logout()
    assert auth.login("PG@example.com").status_code == 302
    assert client.get("/healthz").get_json() == {"status": "ok", "database": "ok"}
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "pg@example.com"))
        assert user.role == "teacher"
        assert user.created_at.tzinfo is not None


def test_database_refuses_bad_roles_and_uppercase_email(app):
    with app.app_context():
        for email, role in [("ok@example.com", "superuser"), ("Upper@Example.com", "student")]:
            db.session.add(User(email=email, display_name="X", password_hash="x", role=role))
            with pytest.raises(IntegrityError):
                db.session.flush()
            db.session.rollback()


def test_login_and_logout(app, client, auth):
    with app.app_context():
        make_user("student", email="sam@example.com", name="Sam Student")
    response = auth.login("SAM@example.com")
    assert response.status_code == 302
    page = client.get("/student").get_data(as_text=True)
    assert "Hello, Sam Student" in page

    response = auth.logout()
    assert response.status_code == 302
    assert "You have logged out." in client.get("/").get_data(as_text=True)
    assert client.get("/student").status_code == 302


def test_wrong_password_and_unknown_email_give_the_same_error(app, client, auth):
    with app.app_context():
        make_user("student", email="sam@example.com")
    for email, password in [
        ("sam@example.com", "wrong-password"),
        ("nobody@example.com", DEFAULT_PASSWORD),
    ]:
        response = auth.login(email, password)
        assert response.status_code == 400
        assert "That email and password do not match an account." in response.get_data(as_text=True)
    assert client.get("/student").status_code == 302


def test_logout_needs_post(client, auth):
    auth.login_as("student")
    assert client.get("/logout").status_code == 405
    assert client.get("/student").status_code == 200


def test_login_follows_a_local_next(client, auth, app):
    with app.app_context():
        make_user("admin", email="root@example.com")
    response = auth.login("root@example.com", next_url="/admin/users")
    assert response.headers["Location"] == "/admin/users"


def test_login_ignores_a_foreign_next(client, auth, app):
    with app.app_context():
        make_user("student", email="s@example.com")
    for target in ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:x"]:
        client.get("/")
        response = auth.login("s@example.com", next_url=target)
        assert response.headers["Location"] == "/dashboard", target
        auth.logout()


def test_anonymous_user_is_sent_to_login_with_next(client):
    response = client.get("/student")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("1234567890", "This is a top-100 common password."),
        ("password12", "This is a very common password."),
        ("qwertyuiop", "This is a top-100 common password."),
        ("aaaaaaaaaaaa", 'Repeats like "aaa" are easy to guess.'),
    ],
)
def test_a_common_password_is_refused_with_the_reason(app, auth, password, reason):
    response = auth.signup(email="common@example.com", password=password)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "This password is too easy to guess." in page
    assert reason.replace('"', "&#34;") in page
    with app.app_context():
        assert count_users() == 0


def test_a_password_made_of_the_account_name_is_refused(app, auth):
    response = auth.signup(email="ann.giver@example.com", name="Ann Giver", password="anngiver12")
    assert response.status_code == 400
    assert "This password is too easy to guess." in response.get_data(as_text=True)
    with app.app_context():
        assert count_users() == 0


def test_the_service_refuses_a_common_password_whatever_the_caller(app):
    from soma.auth.service import InvalidAccount, create_user

    with app.app_context():
        for password in ("1234567890", "password12", "short"):
            with pytest.raises(InvalidAccount):
                create_user("x@example.com", "X", password, "student")
        assert count_users() == 0
