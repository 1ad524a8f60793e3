"""/admin/audit: a confirmed run, started in the background, stored with its result."""

import json
import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from soma.admin import actions
from soma.admin import audit_runs as runs
from soma.extensions import db
from soma.models import AdminAction, Alert, AuditRun, User
from tests.builders import make_user
from tests.helpers import csrf_from, fund, post_form, text_of

# Every audit here runs twice: full, and incremental from a checkpoint of the new database.
pytestmark = pytest.mark.usefixtures("audit_mode")


@pytest.fixture
def inline(app):
    """Run the audit in the request that starts it, as the thread would."""
    app.config["AUDIT_RUN_INLINE"] = True


def all_runs(app) -> list[AuditRun]:
    with app.app_context():
        return db.session.scalars(select(AuditRun).order_by(AuditRun.id)).all()


def admin_actions(app) -> list[AdminAction]:
    with app.app_context():
        return db.session.scalars(select(AdminAction).order_by(AdminAction.id)).all()


def audit_alerts(app) -> list[Alert]:
    with app.app_context():
        return db.session.scalars(
            select(Alert).where(Alert.rule == "audit-failed").order_by(Alert.id)
        ).all()


def run_confirmed(client):
    """Ask, see the confirmation, confirm: the two POSTs an admin makes."""
    asked = post_form(client, "/admin/audit")
    assert asked.status_code == 200
    token = csrf_from(asked.get_data(as_text=True))
    return client.post("/admin/audit", data={"csrf_token": token, "confirmed": "yes"})


def corrupt_two_wallets(app) -> tuple[int, int]:
    """Two students whose balances were raised past their postings, as only someone
    writing to the database behind the ledger could."""
    with app.app_context():
        students = [make_user("student").id for _ in range(2)]
        for user_id in students:
            fund(user_id, 20)
        db.session.execute(
            text("UPDATE wallets SET available = available + 7 WHERE user_id IN (:a, :b)"),
            {"a": students[0], "b": students[1]},
        )
        db.session.commit()
    return students[0], students[1]


def test_the_audit_asks_to_confirm_then_runs_records_the_action_and_passes(
    app, client, auth, inline
):
    admin = auth.login_as("admin")
    page = text_of(client.get("/admin/audit").get_data(as_text=True))
    assert "No audit has been run yet." in page

    asked = post_form(client, "/admin/audit")
    confirm = text_of(asked.get_data(as_text=True))
    assert asked.status_code == 200
    assert "Run the audit?" in confirm and "Only one run at a time." in confirm
    assert all_runs(app) == [] and admin_actions(app) == []  # nothing until confirmed

    token = csrf_from(asked.get_data(as_text=True))
    done = client.post("/admin/audit", data={"csrf_token": token, "confirmed": "yes"})
    [run] = all_runs(app)
    assert done.status_code == 303
    assert done.headers["Location"] == f"/admin/audit?run={run.id}"
    assert (run.status, run.violation_count, json.loads(run.violations)) == ("passed", 0, [])
    assert run.started_by_id == admin.id
    assert run.created_at <= run.started_at <= run.finished_at
    assert run.duration_ms is not None and run.duration_ms >= 0
    [action] = admin_actions(app)
    assert (action.admin_id, action.action, action.object_type, action.object_id) == (
        admin.id,
        "run_audit",
        "audit_run",
        run.id,
    )
    assert actions.values(action.after) == {"status": "queued"}

    page = text_of(client.get(done.headers["Location"]).get_data(as_text=True))
    assert f"Audit run #{run.id} started." in page
    assert "Passed: every ledger invariant holds." in page
    assert f"#{run.id} " in page and admin.display_name in page
    assert audit_alerts(app) == []


def test_a_run_without_csrf_or_confirmation_does_nothing(app, client, auth, inline):
    auth.login_as("admin")
    assert client.post("/admin/audit", data={"confirmed": "yes"}).status_code == 400
    assert all_runs(app) == [] and admin_actions(app) == []


def test_a_run_on_corrupted_data_lists_every_violation_and_alerts_once(app, client, auth, inline):
    first, second = corrupt_two_wallets(app)
    auth.login_as("admin")
    run_confirmed(client)
    [run] = all_runs(app)
    assert (run.status, run.violation_count) == ("failed", 2)
    stored = json.loads(run.violations)
    assert [v["check"] for v in stored] == ["balance-mismatch", "balance-mismatch"]

    page = text_of(client.get(f"/admin/audit?run={run.id}").get_data(as_text=True))
    assert "Failed: 2 violations." in page
    for user_id in (first, second):
        assert f"(user {user_id}) holds 27 available and 0 locked, but its postings sum to 20" in (
            page
        )
    [alert] = audit_alerts(app)
    assert (alert.cause, alert.object_type, alert.object_id) == (
        f"audit-failed:{run.id}",
        "audit_run",
        run.id,
    )
    assert alert.message.startswith(f"Audit run #{run.id} found 2 violation(s)")

    client.get(f"/admin/audit/runs/{run.id}")  # looking again raises nothing
    assert len(audit_alerts(app)) == 1
    run_confirmed(client)  # a second failing run is a failure of its own
    assert [a.cause for a in audit_alerts(app)] == [
        f"audit-failed:{run.id}",
        f"audit-failed:{run.id + 1}",
    ]


def test_flask_soma_audit_stores_its_run_and_alerts(app, runner, client, auth):
    corrupt_two_wallets(app)
    result = runner.invoke(args=["soma", "audit"])
    assert result.exit_code == 1
    assert "Audit FAILED: 2 violation(s)" in result.stderr
    [run] = all_runs(app)
    assert (run.status, run.violation_count, run.started_by_id) == ("failed", 2, None)
    assert run.duration_ms is not None and run.finished_at is not None
    assert [a.cause for a in audit_alerts(app)] == [f"audit-failed:{run.id}"]
    assert admin_actions(app) == []  # nobody's action

    auth.login_as("admin")
    page = text_of(client.get("/admin/audit").get_data(as_text=True))
    assert "flask soma audit (command line)" in page and "Failed: 2 violations." in page


def test_only_one_run_at_a_time_and_an_abandoned_one_does_not_block(
    app, client, auth, clock, inline
):
    auth.login_as("admin")
    with app.app_context():
        admin = db.session.scalar(select(User).where(User.role == "admin"))
        waiting = runs.start(admin)  # queued, never taken up: its process died

    refused = run_confirmed(client)
    assert refused.status_code == 303
    page = text_of(client.get("/admin/audit").get_data(as_text=True))
    assert "An audit run is already queued or running. Wait for it to finish." in page
    assert f"Run #{waiting} is in progress" in page
    assert [r.id for r in all_runs(app)] == [waiting]
    assert len(admin_actions(app)) == 1  # the refused start recorded nothing

    clock.advance(seconds=app.config["AUDIT_RUN_TIMEOUT_SECONDS"] + 1)
    page = text_of(client.get(f"/admin/audit?run={waiting}").get_data(as_text=True))
    assert "abandoned" in page and "Start a new run." in page

    run_confirmed(client)
    old, new = all_runs(app)
    assert (old.id, old.status, old.error) == (waiting, "error", runs.ABANDONED)
    assert new.status == "passed"
    assert len(admin_actions(app)) == 2


def test_the_fragment_polls_until_the_run_is_final(app, client, auth):
    auth.login_as("admin")
    with app.app_context():
        admin = db.session.scalar(select(User).where(User.role == "admin"))
        run_id = runs.start(admin)
    fragment = client.get(f"/admin/audit/runs/{run_id}").get_data(as_text=True)
    assert 'hx-trigger="every 2s"' in fragment and 'data-status="queued"' in fragment
    assert "<html" not in fragment

    runs.work(app, run_id)  # what the thread does
    ended = client.get(f"/admin/audit/runs/{run_id}?seen=queued")
    fragment = ended.get_data(as_text=True)
    assert 'data-status="passed"' in fragment
    assert "hx-get" not in fragment and "hx-trigger" not in fragment
    assert ended.headers["HX-Trigger"] == "audit-finished"  # the page's history follows
    assert "HX-Trigger" not in client.get(f"/admin/audit/runs/{run_id}?seen=passed").headers
    runs.work(app, run_id)  # a second worker for the same run does nothing
    [run] = all_runs(app)
    assert run.status == "passed"


def test_a_run_that_breaks_stores_the_error_without_a_stack(app, client, auth, inline, monkeypatch):
    def broken(full=False):
        raise RuntimeError("checks could not read the ledger\n  File secret.py, line 3")

    monkeypatch.setattr("soma.audit.audit", broken)
    auth.login_as("admin")
    run_confirmed(client)
    [run] = all_runs(app)
    assert (run.status, run.error) == ("error", "RuntimeError: checks could not read the ledger")
    assert run.finished_at is not None and run.violation_count is None
    page = text_of(client.get("/admin/audit").get_data(as_text=True))
    assert "The run could not finish: RuntimeError: checks could not read the ledger" in page
    assert "secret.py" not in page and "Traceback" not in page
    [alert] = audit_alerts(app)
    assert "could not finish" in alert.message


def test_a_run_in_a_real_thread_is_followed_until_done(app, client, auth):
    corrupt_two_wallets(app)
    auth.login_as("admin")
    run_confirmed(client)
    [run] = all_runs(app)
    deadline = time.monotonic() + 60
    while True:
        fragment = client.get(f"/admin/audit/runs/{run.id}").get_data(as_text=True)
        if 'data-status="failed"' in fragment or time.monotonic() > deadline:
            break
        assert 'hx-trigger="every 2s"' in fragment
        time.sleep(0.05)
    assert 'data-status="failed"' in fragment
    assert "Failed: 2 violations." in text_of(fragment)
    [run] = all_runs(app)
    assert (run.status, run.violation_count) == ("failed", 2)
    assert len(audit_alerts(app)) == 1


def test_the_history_is_newest_first_a_page_at_a_time(app, client, auth):
    auth.login_as("admin")
    with app.app_context():
        at = datetime(2026, 11, 1, tzinfo=UTC)
        for n in range(27):
            db.session.add(
                AuditRun(
                    status="passed",
                    created_at=at + timedelta(hours=n),
                    started_at=at + timedelta(hours=n),
                    finished_at=at + timedelta(hours=n, seconds=3),
                    duration_ms=3000 + n,
                    violation_count=0,
                    violations="[]",
                )
            )
        db.session.commit()
        ids = db.session.scalars(select(AuditRun.id).order_by(AuditRun.id.desc())).all()
    html = client.get("/admin/audit").get_data(as_text=True)
    shown = [int(i) for i in re.findall(r'href="/admin/audit\?run=(\d+)"', html)]
    assert shown == ids[:25]
    assert "3.0 s" in text_of(html)
    older = re.search(r'href="([^"]*before=\d+[^"]*)" data-testid="older"', html)
    html = client.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)
    shown = [int(i) for i in re.findall(r'<td[^>]*><a href="/admin/audit\?run=(\d+)"', html)]
    assert shown == ids[25:]
    assert 'data-testid="older"' not in html


def test_a_bad_run_id_is_404(client, auth):
    auth.login_as("admin")
    assert client.get("/admin/audit?run=999999").status_code == 404
    assert client.get(f"/admin/audit/runs/{2**63}").status_code == 404
    assert client.get("/admin/audit?run=abc").status_code == 200  # ignored, as elsewhere


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_students_and_teachers_get_403_everywhere_in_the_audit(app, client, auth, role):
    with app.app_context():
        admin = make_user("admin")
        run_id = runs.start(admin)
    auth.login_as(role)
    page = client.get("/admin/audit")
    token = csrf_from(client.get("/", follow_redirects=True).get_data(as_text=True))
    posted = client.post("/admin/audit", data={"csrf_token": token, "confirmed": "yes"})
    fragment = client.get(f"/admin/audit/runs/{run_id}")
    for response in (page, posted, fragment):
        assert response.status_code == 403
        assert "Not allowed" in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(AuditRun)) == 1
        assert db.session.scalar(select(func.count()).select_from(AdminAction)) == 1
