"""/admin/audit: run the ledger audit in the background and keep every run's result.

A run is queued by the page (with the admin action, in one transaction), then done by
a daemon thread with its own app context, so the request never waits on the checks;
the page polls the run's fragment until it is final. `flask soma audit` records its
runs here too (started by nobody), so both keep their result and the time it took.

One run at a time: the run is inserted by one conditional INSERT ... SELECT ... WHERE
NOT EXISTS (a queued or running run younger than AUDIT_RUN_TIMEOUT_SECONDS). On
PostgreSQL a transaction-scoped advisory lock is taken first, so two admins starting
at once are serialised and the second sees the first's row (READ COMMITTED gives the
INSERT a fresh snapshot after the wait); SQLite runs the one statement atomically. A
run older than the timeout was left by a process that died: it is shown as abandoned,
marked so when the next run starts, and never blocks one.
"""

import json
import threading
import time
from datetime import datetime, timedelta

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import and_, exists, insert, literal, or_, select, text, update

from soma import clock
from soma.admin import actions
from soma.admin.blueprint import bp
from soma.admin.confirm import confirmation, confirmed
from soma.admin.health import first_line
from soma.alerts import raise_alert
from soma.extensions import db
from soma.forms import ActionForm
from soma.inputs import query_id
from soma.models import AuditRun, AuditRunStatus, Role, User
from soma.security import role_required

ACTIVE = (AuditRunStatus.QUEUED.value, AuditRunStatus.RUNNING.value)
FINAL = (AuditRunStatus.PASSED.value, AuditRunStatus.FAILED.value, AuditRunStatus.ERROR.value)
# Any constant shared by every process: the key of the advisory lock that serialises starts.
START_LOCK = 0x50A4_A0D1
RUNS_PER_PAGE = 25
ABANDONED = "Abandoned: it did not finish within AUDIT_RUN_TIMEOUT_SECONDS (its process died?)."


class AuditBusy(Exception):
    """Another run is queued or running."""


def timeout() -> timedelta:
    return timedelta(seconds=current_app.config["AUDIT_RUN_TIMEOUT_SECONDS"])


def _since(cutoff: datetime, young: bool):
    """Queued or running, and begun (or queued, if not begun) after `cutoff` when `young`,
    before it when not. Spelled out both ways: NOT of a NULL comparison is never true."""

    def after(column):
        return column >= cutoff if young else column < cutoff

    return and_(
        AuditRun.status.in_(ACTIVE),
        or_(
            and_(AuditRun.started_at.is_not(None), after(AuditRun.started_at)),
            and_(AuditRun.started_at.is_(None), after(AuditRun.created_at)),
        ),
    )


def _young(now: datetime):
    """A queued or running run that has not yet passed the timeout (so it blocks a start)."""
    return _since(now - timeout(), young=True)


def is_abandoned(run: AuditRun, now: datetime | None = None) -> bool:
    """Whether `run` is still queued or running long past the timeout."""
    if run.status not in ACTIVE:
        return False
    return (now or clock.now()) - (run.started_at or run.created_at) > timeout()


def shown_status(run: AuditRun) -> str:
    return "abandoned" if is_abandoned(run) else run.status


def start(admin: User, full: bool = False) -> int:
    """Queue a run for `admin` with its admin action, in one committed transaction;
    return its id. AuditBusy when another run is queued or running. `full`: recheck
    everything from the start, not only what the last checkpoint has not proven."""
    now = clock.now()
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": START_LOCK})
    # Runs left behind by a dead process: say so in their row, now that one replaces them.
    db.session.execute(
        update(AuditRun)
        .where(_since(now - timeout(), young=False))
        .values(status=AuditRunStatus.ERROR.value, error=ABANDONED)
    )
    queued = literal(AuditRunStatus.QUEUED.value)
    values = select(
        queued, literal(admin.id), literal(now, AuditRun.created_at.type), literal(full)
    )
    columns = values.where(~exists().where(_young(now)))
    run_id = db.session.execute(
        insert(AuditRun)
        .from_select(["status", "started_by_id", "created_at", "full"], columns)
        .returning(AuditRun.id)
    ).scalar()
    if run_id is None:
        db.session.rollback()
        raise AuditBusy
    detail = {"status": "queued", **({"full": True} if full else {})}
    actions.record(admin, "run_audit", "audit_run", run_id, None, detail)
    db.session.commit()
    return run_id


def launch(run_id: int) -> None:
    """Do the run in a daemon thread (or here, when AUDIT_RUN_INLINE is set: tests)."""
    app = current_app._get_current_object()
    if app.config.get("AUDIT_RUN_INLINE"):
        work(app, run_id)
        return
    worker = threading.Thread(target=work, args=(app, run_id), name=f"audit-run-{run_id}")
    worker.daemon = True
    worker.start()


def work(app, run_id: int) -> None:
    """Run the audit for queued run `run_id` in an app context of its own, and store how
    it went: passed, failed with its violations (and an alert), or error."""
    with app.app_context():
        try:
            claimed = db.session.execute(
                update(AuditRun)
                .where(AuditRun.id == run_id, AuditRun.status == AuditRunStatus.QUEUED.value)
                .values(status=AuditRunStatus.RUNNING.value, started_at=clock.now())
            ).rowcount
            db.session.commit()
            if not claimed:
                return  # already taken, or abandoned meanwhile
            execute(run_id)
        except Exception:
            # The database went away mid-run, say: the row stays as it was and is shown
            # as abandoned after AUDIT_RUN_TIMEOUT_SECONDS; the log has the story.
            current_app.logger.exception("audit run %s: the worker failed", run_id)
        finally:
            db.session.remove()


def execute(run_id: int | None, full: bool | None = None) -> tuple[int, list | None]:
    """Run every check for run `run_id` (already running; None: a new one, as the CLI
    does), incrementally from the last checkpoint unless `full` (None: as the run was
    queued); store its result; return (run id, violations), None when it could not finish.
    A clean run writes the next checkpoint (soma.audit.checkpoint)."""
    import soma.audit

    if run_id is None:
        run = AuditRun(status=AuditRunStatus.RUNNING.value, created_at=clock.now(), full=bool(full))
        run.started_at = run.created_at
        db.session.add(run)
        db.session.commit()
        run_id = run.id
    elif full is None:
        full = db.session.scalar(select(AuditRun.full).where(AuditRun.id == run_id))
    began = time.monotonic()
    try:
        result = soma.audit.audit(full=bool(full))
        found = result.violations
        if result.full and not full:  # no checkpoint to start from, or one not to trust
            db.session.execute(update(AuditRun).where(AuditRun.id == run_id).values(full=True))
    except BaseException as error:  # Ctrl-C too: never leave the run "running"
        db.session.rollback()
        current_app.logger.exception("audit run %s: could not finish", run_id)
        _finish(run_id, began, AuditRunStatus.ERROR, error=first_line(error)[:500])
        if not isinstance(error, Exception):
            raise
        return run_id, None
    status = AuditRunStatus.FAILED if found else AuditRunStatus.PASSED
    listed = [{"check": v.check, "detail": v.detail} for v in found]
    _finish(run_id, began, status, violations=listed)
    return run_id, found


def _finish(run_id: int, began: float, status: AuditRunStatus, violations=None, error=None):
    """Store the run's end (even over an "abandoned" mark: it did finish); alert on failure."""
    values = {
        "status": status.value,
        "finished_at": clock.now(),
        "duration_ms": int((time.monotonic() - began) * 1000),
        "error": error,
    }
    if violations is not None:
        values.update(violation_count=len(violations), violations=json.dumps(violations))
    db.session.execute(
        update(AuditRun)
        .where(AuditRun.id == run_id, AuditRun.finished_at.is_(None))
        .values(**values)
    )
    if status != AuditRunStatus.PASSED:
        what = (
            f"found {len(violations)} violation(s) of the ledger's invariants"
            if violations
            else f"could not finish ({error})"
        )
        raise_alert(
            "audit-failed",
            f"audit-failed:{run_id}",
            f"Audit run #{run_id} {what}. See /admin/audit?run={run_id}.",
            object_type="audit_run",
            object_id=run_id,
        )
    db.session.commit()


def violations_of(run: AuditRun) -> list[dict]:
    return json.loads(run.violations) if run.violations else []


# Pages -------------------------------------------------------------------------------------


def _page(shown: AuditRun | None, status: int = 200):
    before = request.args.get("before", type=query_id(AuditRun.id))
    query = select(AuditRun).order_by(AuditRun.id.desc()).limit(RUNS_PER_PAGE + 1)
    if before:
        query = query.where(AuditRun.id < before)
    rows = db.session.scalars(query).all()
    runs = rows[:RUNS_PER_PAGE]
    busy = db.session.scalar(select(AuditRun.id).where(_young(clock.now())).limit(1))
    return render_template(
        "admin/audit.html",
        run=shown,
        runs=runs,
        next_before=runs[-1].id if len(rows) > RUNS_PER_PAGE else None,
        busy=busy,
        form=ActionForm(),
        **_helpers(),
    ), status


def _helpers() -> dict:
    return {
        "shown_status": shown_status,
        "violations_of": violations_of,
        "seconds": lambda ms: "—" if ms is None else f"{ms / 1000:.1f} s",
    }


@bp.get("/audit")
@role_required(Role.ADMIN)
def audit():
    """The run asked for (or the newest), its violations, and every run before it."""
    run_id = request.args.get("run", type=query_id(AuditRun.id))
    if run_id is not None:
        shown = db.session.get(AuditRun, run_id) or abort(404)
    else:
        shown = db.session.scalars(select(AuditRun).order_by(AuditRun.id.desc()).limit(1)).first()
    return _page(shown)


@bp.post("/audit")
@role_required(Role.ADMIN)
def audit_start():
    """Start a run, after the confirmation step; the page then follows it."""
    if not ActionForm().validate_on_submit():
        abort(400)
    full = request.form.get("full") == "yes"
    if not confirmed():
        if full:
            checks = "every ledger invariant over every row (flask soma audit --full)"
            warning = (
                "It reads every ledger row: on a large ledger it takes a while and loads the "
                "database. Only one run at a time."
            )
        else:
            checks = (
                "every ledger invariant over what the last checkpoint has not proven, and the "
                "checkpoint itself (flask soma audit)"
            )
            warning = "Only one run at a time."
        return confirmation(
            "Run a full audit?" if full else "Run the audit?",
            [
                ("Checks", checks),
                ("Runs", "in the background; this page follows it"),
            ],
            "Run the audit",
            url_for("admin.audit"),
            warning=warning,
        )
    try:
        run_id = start(current_user, full=full)
    except AuditBusy:
        flash("An audit run is already queued or running. Wait for it to finish.", "error")
        return redirect(url_for("admin.audit"), 303)
    launch(run_id)
    flash(f"Audit run #{run_id} started.", "success")
    return redirect(url_for("admin.audit", run=run_id), 303)


@bp.get("/audit/runs/<id(audit_runs):run_id>")
@role_required(Role.ADMIN)
def audit_run_status(run_id: int):
    """A run's fragment; it polls itself until the run is final."""
    run = db.session.get(AuditRun, run_id, populate_existing=True) or abort(404)
    body = render_template("admin/_audit_run.html", run=run, **_helpers())
    if request.args.get("seen") in ACTIVE and shown_status(run) not in ACTIVE:
        # It ended since the page last looked: the page's history follows (audit.html).
        return body, 200, {"HX-Trigger": "audit-finished"}
    return body
