"""CSRF, security headers, error pages, the health check and the login rate limit."""

import pytest
from sqlalchemy import func, select

from soma.extensions import db
from soma.models import User
from soma.security import is_safe_next
from tests.builders import DEFAULT_PASSWORD, make_user
from tests.conftest import make_app
from tests.helpers import csrf_from


def test_post_without_csrf_token_gets_400_and_changes_nothing(app, client):
    response = client.post(
        "/signup",
        data={
            "email": "x@example.com",
            "display_name": "X",
            "role": "student",
            "password": DEFAULT_PASSWORD,
            "confirm": DEFAULT_PASSWORD,
        },
    )
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "Form expired" in page
    assert "nothing was changed" in page
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(User)) == 0


def test_post_with_a_forged_csrf_token_gets_400(app, client):
    with app.app_context():
        make_user("student", email="s@example.com")
    response = client.post(
        "/login",
        data={"email": "s@example.com", "password": DEFAULT_PASSWORD, "csrf_token": "forged"},
    )
    assert response.status_code == 400
    assert client.get("/student").status_code == 302


def test_logout_without_csrf_keeps_the_user_logged_in(client, auth):
    auth.login_as("student")
    response = client.post("/logout")
    assert response.status_code == 400
    assert client.get("/student").status_code == 200


def test_htmx_csrf_header_is_accepted(app, client):
    with app.app_context():
        make_user("student", email="s@example.com")
    token = csrf_from(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login",
        data={"email": "s@example.com", "password": DEFAULT_PASSWORD},
        headers={"X-CSRFToken": token, "HX-Request": "true"},
    )
    assert response.status_code == 302


def test_htmx_request_without_csrf_gets_an_inline_error(client):
    response = client.post("/logout", headers={"HX-Request": "true"})
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert page.lstrip().startswith('<div class="error-inline"')
    assert "<html" not in page


def test_security_headers_on_every_page(client):
    for path in ["/", "/login", "/no-such-page"]:
        headers = client.get(path).headers
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
        assert headers["X-Frame-Options"] == "DENY"


def test_pages_have_no_inline_scripts(client):
    page = client.get("/login").get_data(as_text=True)
    assert "<script>" not in page
    assert "<script src=" in page
    assert " onclick=" not in page


def test_session_cookie_is_httponly(app, client, auth):
    auth.login_as("student")
    cookies = [c for c in client._cookies.values() if c.key == "session"]
    assert cookies and cookies[0].http_only


def test_404_page_in_the_layout(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    page = response.get_data(as_text=True)
    assert "Page not found" in page
    assert 'aria-label="Main"' in page


def test_500_page_in_the_layout(app, client):
    @app.get("/boom")
    def boom():
        raise RuntimeError("kaboom")

    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = client.get("/boom")
    assert response.status_code == 500
    page = response.get_data(as_text=True)
    assert "Something went wrong" in page
    assert "kaboom" not in page


def test_domain_error_renders_409(app, client):
    from soma.errors import SomaError

    @app.get("/conflict")
    def conflict():
        raise SomaError("This class has already started.")

    response = client.get("/conflict")
    assert response.status_code == 409
    assert "This class has already started." in response.get_data(as_text=True)


def test_healthz_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok"}


def test_healthz_503_when_database_does_not_answer(tmp_path):
    app = make_app(f"sqlite:///{tmp_path}/missing-dir/soma.db")
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "error", "database": "unavailable"}
    # The liveness probe asks nothing of the database: the process is up.
    live = app.test_client().get("/livez")
    assert (live.status_code, live.get_json()) == (200, {"status": "ok"})


def test_login_rate_limit_gives_429_with_retry_time(app, client):
    with app.app_context():
        make_user("student", email="s@example.com")
    token = csrf_from(client.get("/login").get_data(as_text=True))
    attempt = {"email": "s@example.com", "password": "wrong-password", "csrf_token": token}
    statuses = [client.post("/login", data=attempt).status_code for _ in range(5)]
    assert statuses == [400] * 5
    response = client.post("/login", data={**attempt, "password": DEFAULT_PASSWORD})
    assert response.status_code == 429
    page = response.get_data(as_text=True)
    assert "Too many attempts" in page
    assert "Please try again in" in page
    assert 0 < int(response.headers["Retry-After"]) <= 60
    # The correct password was refused too: the user is still logged out.
    assert client.get("/student").status_code == 302
    # Looking at the login page is not limited.
    assert client.get("/login").status_code == 200


@pytest.mark.parametrize(
    "target,safe",
    [
        ("/student", True),
        ("/admin/users?role=teacher", True),
        ("", False),
        (None, False),
        ("https://evil.example/", False),
        ("//evil.example", False),
        ("/\\evil.example", False),
        ("student", False),
        ("/\tjavascript:alert(1)", False),
    ],
)
def test_is_safe_next(target, safe):
    assert is_safe_next(target) is safe
