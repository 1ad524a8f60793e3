"""Each role reaches its own pages; every other role gets the 403 page."""

import pytest

from tests.builders import make_user

PAGES = {
    "/student": ("student", "Book live classes"),
    "/teacher": ("teacher", "Teach live classes"),
    "/earnings": ("teacher", "<h1>Your earnings</h1>"),
    "/admin/": ("admin", 'data-testid="count-student"'),
    "/admin/users": ("admin", "<h1>Users</h1>"),
    "/admin/users?q=example": ("admin", 'data-testid="user-search"'),
    "/admin/health": ("admin", "<h1>Health</h1>"),
    "/admin/audit": ("admin", "<h1>Audit</h1>"),
    "/admin/pricing": ("admin", "<h1>Pricing</h1>"),
    "/admin/packages": ("admin", "<h1>Packages</h1>"),
    "/admin/actions": ("admin", "<h1>Admin actions</h1>"),
    "/admin/alerts": ("admin", "<h1>Alerts</h1>"),
}


@pytest.mark.parametrize("role", ["student", "teacher", "admin"])
@pytest.mark.parametrize("path", list(PAGES))
def test_role_matrix(client, auth, role, path):
    user = auth.login_as(role)
    owner, marker = PAGES[path]
    response = client.get(path)
    page = response.get_data(as_text=True)
    if role == owner:
        assert response.status_code == 200
        assert marker in page
        assert user.display_name in page
    else:
        assert response.status_code == 403
        assert "Not allowed" in page
        assert "Your account does not have access to this page." in page
        assert marker not in page


@pytest.mark.parametrize(
    "role,home", [("student", "/student"), ("teacher", "/teacher"), ("admin", "/admin/")]
)
def test_dashboard_sends_each_role_home(client, auth, role, home):
    auth.login_as(role)
    assert client.get("/dashboard").headers["Location"] == home


def test_admin_sees_every_user_by_role(client, auth, app):
    with app.app_context():
        make_user("student", email="s1@example.com")
        make_user("student", email="s2@example.com")
        make_user("teacher", email="t1@example.com")
    auth.login_as("admin", email="boss@example.com")
    overview = client.get("/admin/").get_data(as_text=True)
    assert 'data-testid="count-student">2<' in overview
    assert 'data-testid="count-teacher">1<' in overview
    assert 'data-testid="count-admin">1<' in overview
    students = client.get("/admin/users?role=student").get_data(as_text=True)
    assert "s1@example.com" in students and "s2@example.com" in students
    assert "t1@example.com" not in students
