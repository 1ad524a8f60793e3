"""The layout every page shares: the viewer's own rate in the footer, error pages that
offer the way on (log-in to a visitor, the home page to a user), one status palette."""

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import abort, render_template_string

from soma.badges import STATUS_TONES, TONES, status_tone, status_words
from soma.errors import SomaError
from soma.extensions import db
from soma.ledger.pricing import publish_pricing
from soma.models import AuditRunStatus, ClassStatus, PurchaseStatus, WithdrawalStatus
from soma.models.purchase import ReversalStatus
from tests.builders import DEFAULT_PASSWORD, make_user
from tests.helpers import csrf_from, text_of

CSS = Path(__file__).resolve().parents[2] / "static" / "css" / "soma.css"


def footer_of(html: str) -> str:
    found = re.search(r'<footer class="container site-footer">(.*?)</footer>', html, re.S)
    assert found, "the page has the site's footer"
    return text_of(found.group(1))


# The footer: each viewer's own rate, from the pricing in force.


@pytest.mark.parametrize(
    "role,path,expected",
    [
        ("anonymous", "/", "Soma · tokens for live tutoring · 10 tokens = $1.00"),
        ("student", "/student", "Soma · tokens for live tutoring · 10 tokens = $1.00"),
        (
            "teacher",
            "/teacher",
            "Soma · tokens for live tutoring · 10 tokens = $0.40 when you withdraw",
        ),
        (
            "admin",
            "/admin/users",
            "Soma · tokens for live tutoring · students: 10 tokens = $1.00"
            " · teachers: 10 tokens = $0.40",
        ),
    ],
)
def test_the_footer_shows_the_viewers_own_rate(client, auth, role, path, expected):
    if role != "anonymous":
        auth.login_as(role)
    response = client.get(path)
    assert response.status_code == 200
    assert footer_of(response.get_data(as_text=True)) == expected


def test_the_footer_follows_the_pricing_in_force(app, client, auth):
    with app.app_context():
        moment = datetime.now(UTC) - timedelta(minutes=1)
        publish_pricing("teacher", 10, 50, 10, moment, backdate=True)
        publish_pricing("student", 20, 250, 10, moment, backdate=True)
        db.session.commit()
    assert footer_of(client.get("/").get_data(as_text=True)).endswith("· 20 tokens = $2.50")
    auth.login_as("teacher")
    footer = footer_of(client.get("/teacher").get_data(as_text=True))
    assert footer.endswith("· 10 tokens = $0.50 when you withdraw")
    assert "$2.50" not in footer


def test_the_landing_page_quotes_the_pricing_in_force(app, client):
    with app.app_context():
        moment = datetime.now(UTC) - timedelta(minutes=1)
        publish_pricing("student", 10, 120, 12, moment, backdate=True)
        db.session.commit()
    page = text_of(client.get("/").get_data(as_text=True))
    assert (
        "Students 10 tokens = $1.20 A class 12 tokens an hour Teachers earn 10 tokens = $0.40"
        in (page)
    )


# Error pages: a visitor is offered log-in and the home page, a user their home page.


def error_links(html: str) -> list[tuple[str, str]]:
    found = re.search(r'<article class="error-page".*?</article>', html, re.S)
    assert found, "the page is the error page"
    return [
        (href, text_of(label))
        for href, label in re.findall(r'<a href="([^"]*)"[^>]*>(.*?)</a>', found.group(0), re.S)
    ]


VISITOR_LINKS = [("/", "Go to the home page"), ("/login", "Log in")]
USER_LINKS = [("/dashboard", "Go to your home page")]


@pytest.fixture
def failing(app):
    """A route that fails with any status, as the app's own routes do."""

    @app.get("/fail/<int:status>")
    def fail(status):
        if status == 409:
            raise SomaError("This class has already started.")
        if status == 500:
            raise RuntimeError("kaboom")
        abort(status)

    app.config["PROPAGATE_EXCEPTIONS"] = False


@pytest.mark.parametrize("status", [400, 403, 404, 405, 409, 500])
@pytest.mark.parametrize("role", ["anonymous", "student"])
def test_error_pages_offer_the_way_on(client, auth, failing, role, status):
    if role != "anonymous":
        auth.login_as(role)
    response = client.get(f"/fail/{status}")
    assert response.status_code == status
    html = response.get_data(as_text=True)
    assert f'data-status="{status}"' in html
    assert error_links(html) == (VISITOR_LINKS if role == "anonymous" else USER_LINKS)


def test_the_real_404_and_csrf_400_pages_offer_log_in_to_a_visitor(client):
    assert error_links(client.get("/no-such-page").get_data(as_text=True)) == VISITOR_LINKS
    refused = client.post("/login", data={"email": "a@example.com", "password": "x"})
    assert refused.status_code == 400
    assert "Form expired" in refused.get_data(as_text=True)
    assert error_links(refused.get_data(as_text=True)) == VISITOR_LINKS


def test_the_login_throttles_429_offers_log_in_not_a_home_page(app, client):
    with app.app_context():
        make_user("student", email="s@example.com")
    token = csrf_from(client.get("/login").get_data(as_text=True))
    attempt = {"email": "s@example.com", "password": "wrong-password", "csrf_token": token}
    assert [client.post("/login", data=attempt).status_code for _ in range(5)] == [400] * 5
    response = client.post("/login", data={**attempt, "password": DEFAULT_PASSWORD})
    assert response.status_code == 429
    html = response.get_data(as_text=True)
    assert "Too many attempts" in html
    assert error_links(html) == VISITOR_LINKS
    assert "your home page" not in html


def test_a_logged_in_users_error_page_has_no_log_in(client, auth):
    auth.login_as("teacher")
    html = client.get("/no-such-page").get_data(as_text=True)
    assert error_links(html) == USER_LINKS
    assert ">Log in<" not in html


# One status palette.


def test_every_status_the_app_stores_has_a_tone():
    stored = [ClassStatus, PurchaseStatus, WithdrawalStatus, AuditRunStatus, ReversalStatus]
    for kind in stored:
        for status in kind:
            assert status.value in STATUS_TONES, f"{kind.__name__}.{status.name} has no tone"
            assert status_tone(status) == STATUS_TONES[status.value]
    assert set(STATUS_TONES.values()) == set(TONES)


@pytest.mark.parametrize(
    "status,tone",
    [
        ("paid", "success"),
        ("completed", "success"),
        ("passed", "success"),
        ("failed", "danger"),
        ("rejected", "danger"),
        ("aborted", "danger"),
        ("disputed", "danger"),
        ("frozen", "danger"),
        ("requested", "warning"),
        ("pending", "warning"),
        ("processing", "warning"),
        ("paused", "warning"),
        ("scheduled", "info"),
        ("in_progress", "info"),
        ("queued", "info"),
        ("cancelled", "neutral"),
        ("expired", "neutral"),
        ("acknowledged", "neutral"),
        ("Paid", "success"),
        ("something new", "neutral"),
        ("", "neutral"),
        (None, "neutral"),
    ],
)
def test_a_status_maps_to_its_tone(status, tone):
    assert status_tone(status) == tone


def test_the_stylesheet_colours_each_status_with_its_tone():
    """soma.css holds the palette: a badge with a status class, or inside an element with
    one, takes its tone's colour; the mapping in soma/badges.py is the only list."""
    css = CSS.read_text()
    own = {tone: [] for tone in TONES}
    for selectors, tone in re.findall(r"([^{}]+)\{ background: var\(--soma-tone-(\w+)\); \}", css):
        own[tone].append(selectors)
    assert all(own.values())
    for status, tone in STATUS_TONES.items():
        selectors = " ".join(own[tone])
        assert f".status-badge.status-{status}," in selectors, status
        assert f".status-{status} .status-badge" in selectors, status
        for other in set(TONES) - {tone}:
            assert f".status-badge.status-{status}," not in " ".join(own[other]), status


def contrast_with_white(colour: str) -> float:
    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    luminance = 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)
    return 1.05 / (luminance + 0.05)


def test_white_words_on_every_tone_pass_wcag_aa():
    css = CSS.read_text()
    for tone in TONES:
        colour = re.search(rf"--soma-tone-{tone}: (#[0-9a-f]{{6}});", css).group(1)
        assert contrast_with_white(colour) >= 4.5, (tone, colour)


def test_the_badge_macro_shows_the_words_with_the_tone(app):
    with app.test_request_context():
        shown = render_template_string(
            '{% from "partials/_badge.html" import badge %}'
            "{{ badge('in_progress') }}|{{ badge('failed', 'Paid, then reversed', 'w') }}"
        )
    first, second = shown.split("|")
    assert first == (
        '<span class="status-badge tone-info" data-status="in_progress">In progress</span>'
    )
    assert second == (
        '<span class="status-badge tone-danger" data-status="failed" data-testid="w">'
        "Paid, then reversed</span>"
    )
    assert status_words("ended_early") == "Ended early"


# The navigation: one menu (a <details>) whose closed line shows the counts.


def summary_of(html: str) -> str:
    found = re.search(r'<summary data-testid="nav-menu-toggle">(.*?)</summary>', html, re.S)
    assert found, "the navigation has its menu"
    return text_of(found.group(1))


def test_the_closed_menu_shows_the_unread_count_and_an_admins_open_alerts(app, client, auth):
    from soma.alerts import raise_alert
    from soma.notifications import service as notifications

    student = auth.login_as("student")
    with app.app_context():
        notifications.notify(student.id, "gift", "You received a gift.")
        notifications.notify(student.id, "gift", "You received another gift.")
        raise_alert("refund", "refund:1", "A refund of $2.00 on purchase #1 (refunded).")
        db.session.commit()
    html = client.get("/student").get_data(as_text=True)
    assert summary_of(html) == "Menu 2 unread"
    nav = re.search(r'<nav aria-label="Main".*?</nav>', html, re.S).group(0)
    menu = re.search(r"<details[^>]*>.*?</details>", nav, re.S).group(0)
    assert 'href="/buy/"' in menu and 'action="/logout"' in menu and "csrf_token" in menu
    auth.logout()
    auth.login_as("admin")
    assert summary_of(client.get("/admin/users").get_data(as_text=True)) == "Menu 1 open alert"
