"""`flask soma ...`: demo data, account administration and the ledger audit."""

import secrets
import time

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy.exc import SQLAlchemyError

from soma import clock, ledger
from soma.auth import service
from soma.demo import replay_year
from soma.errors import SomaError
from soma.extensions import db
from soma.models import EntryKind, PlatformAccount, Role, utcnow

soma_cli = AppGroup("soma", help="Soma's own commands.")

# The student and teacher are in Nairobi (times show in EAT); the admin reads UTC.
DEMO_ACCOUNTS = [
    ("student@example.com", "Demo Student", Role.STUDENT, "student-demo-pass", "Africa/Nairobi"),
    ("teacher@example.com", "Demo Teacher", Role.TEACHER, "teacher-demo-pass", "Africa/Nairobi"),
    ("admin@example.com", "Demo Admin", Role.ADMIN, "admin-demo-pass", "UTC"),
]

DEMO_STUDENT_BONUS = 100


@soma_cli.command("create-admin")
@click.argument("email")
@click.option("--name", default="Administrator", show_default=True, help="Display name.")
@click.option(
    "--password",
    envvar="SOMA_ADMIN_PASSWORD",
    help="Password (at least 10 characters). Without it, one is generated and printed.",
)
def create_admin(email: str, name: str, password: str | None) -> None:
    """Create an admin account; sign-up never makes one."""
    generated = password is None
    if generated:
        password = secrets.token_urlsafe(12)
    try:
        user = service.create_user(email, name, password, Role.ADMIN)
    except SomaError as error:
        raise click.ClickException(error.message) from None
    click.echo(f"Created admin {user.email}.")
    if generated:
        click.echo(f"Password: {password}")


@soma_cli.command("demo")
def demo() -> None:
    """Create the demo student, teacher and admin, give the teacher a past year of classes
    with the student, and print their passwords (idempotent: a rerun adds nothing)."""
    if current_app.config["SOMA_ENV"] == "production":
        raise click.ClickException("Demo accounts are never created in production.")
    click.echo("Demo accounts (log in at http://127.0.0.1:5000/login):")
    users = {}
    for email, name, role, password, zone in DEMO_ACCOUNTS:
        user = service.find_user_by_email(email)
        if user is None:
            user = service.create_user(email, name, password, role, zone)
            state = "created"
        else:
            if not user.check_password(password):
                user.set_password(password)
                db.session.commit()
            state = "exists"
        click.echo(f"  {role.value:<8} {email:<22} password: {password}  ({state})")
        users[role] = user
    student, teacher = users[Role.STUDENT], users[Role.TEACHER]
    # The past year first, so that the student's bonus of today comes after it.
    year = replay_year(student, teacher)
    if year.classes:
        click.echo(
            f"           gave the demo teacher {year.classes} past classes with the demo "
            f"student over the year ({year.credited:,} tokens credited to the student for them)"
        )
    _give_demo_bonus(student.id)


def _give_demo_bonus(user_id: int) -> None:
    """Give the demo student a promotions bonus, once: the key makes a rerun a no-op."""
    with ledger.atomic():
        entry = ledger.credit(
            user_id,
            DEMO_STUDENT_BONUS,
            key=f"demo:bonus:{user_id}",
            kind=EntryKind.BONUS,
            source=PlatformAccount.PROMOTIONS,
            memo="Welcome bonus for the demo student",
        )
    if not entry.replayed:
        click.echo(f"           gave the demo student a bonus of {DEMO_STUDENT_BONUS} tokens")


@soma_cli.command("shards")
def shards() -> None:
    """Make the sub-accounts of every platform account that SOMA_PLATFORM_SHARDS asks for
    and do not exist yet (idempotent). Until they exist, the app uses those that do."""
    from soma.ledger.shards import ensure_shards, existing_shards

    wanted = current_app.config["SOMA_PLATFORM_SHARDS"]
    created = ensure_shards(wanted)
    with db.engine.connect() as connection:
        found = existing_shards(connection)
    click.echo(
        f"Platform accounts have {found} shard(s) each ({created} created; the setting asks "
        f"for {wanted}); a running app uses min(setting, shards) once restarted."
    )


@soma_cli.command("audit")
@click.option(
    "--full",
    is_flag=True,
    help="Recheck everything from the start, not only what the last checkpoint has not proven.",
)
def audit(full: bool) -> None:
    """Check the ledger's invariants; exit 1 naming each violation, or 0 when all hold.

    Without --full only what came after the last clean run's checkpoint is checked (with
    the checkpoint itself); a clean run writes the next checkpoint. The run is stored
    with the time it took (shown at /admin/audit); one that finds violations raises an
    alert."""
    from soma.admin.audit_runs import execute
    from soma.models import AuditRun

    run_id, violations = execute(None, full=full)
    if violations is None:
        raise click.ClickException(f"Audit run #{run_id} could not finish (see the log).")
    ran = "full" if db.session.get(AuditRun, run_id).full else "incremental"
    if not violations:
        click.echo(f"Audit passed: every ledger invariant holds ({ran} run).")
        return
    click.echo(f"Audit FAILED: {len(violations)} violation(s) ({ran} run).", err=True)
    for violation in violations:
        click.echo(f"  - {violation}", err=True)
    raise SystemExit(1)


@soma_cli.command("sweep")
@click.option(
    "--every",
    type=click.IntRange(min=1),
    default=None,
    help="Repeat the pass every N seconds until stopped (Ctrl-C). Without it, run one pass.",
)
def sweep(every: int | None) -> None:
    """Settle classes that have run their time and end those paused past the limit; ask
    M-Pesa and Stripe about payments whose news is late; expire abandoned checkouts; ask
    each rail about withdrawals still processing (the sandbox pays its own here); fold
    the console's figures and catch up teachers' earnings far behind; send the mail."""
    from soma.admin.health import SweeperWatch
    from soma.admin.metrics import advance_checkpoint as fold_metrics
    from soma.alert_rules import raise_alerts
    from soma.classes.service import sweep as sweep_once
    from soma.mail import drain as send_mail
    from soma.payouts.withdrawals import processing_too_long
    from soma.payouts.withdrawals import sweep as sweep_withdrawals
    from soma.purchases.mpesa import recheck_pending as recheck_mpesa
    from soma.purchases.service import expire_abandoned
    from soma.purchases.stripe_checkout import recheck_stale as recheck_stripe
    from soma.reminders import queue_reminders

    watch = SweeperWatch()  # beats after each pass; raises the stall and outage alerts
    try:
        while True:
            started = clock.now()
            try:
                result = sweep_once()
                recheck_mpesa()  # payments whose callback never came
                recheck_stripe()  # checkouts that should have expired by now
                expire_abandoned()  # checkouts nobody will finish
                paid_out = sweep_withdrawals()  # withdrawals a rail can now finish
                stuck = [withdrawal.id for withdrawal in processing_too_long()]
                raise_alerts(clock.now())  # what an admin must look at, raised once each
                fold_metrics()  # the console's daily figures, a batch of new entries
                queue_reminders(clock.now())  # classes starting soon: mail teacher and student
                send_mail()  # the outbox, after the money work: no send holds up a payment
                _catch_up_earnings()  # teachers' earnings sums far behind, a few seconds' worth
                watch.passed(started, _pass_detail(result, paid_out, stuck))
            except Exception as error:
                # The database restarting, say: log it and try again next pass,
                # rather than leave unwatched classes holding tokens.
                db.session.remove()
                watch.failed(started, error)
                if every is None:
                    raise
                current_app.logger.exception("sweep: the pass failed; trying again")
                time.sleep(every)
                continue
            db.session.remove()
            if stuck:
                # Also an audit violation (soma.audit.withdrawals): say it where it is seen.
                current_app.logger.warning(
                    "sweep: withdrawals processing past WITHDRAWAL_PROCESSING_ALERT_MINUTES: %s",
                    ", ".join(map(str, stuck)),
                )
            if result.completed or result.ended_early or result.failed or paid_out or every is None:
                click.echo(
                    f"{utcnow():%H:%M:%S} sweep: {result.completed} completed, "
                    f"{result.ended_early} ended early (paused too long), {result.failed} failed; "
                    f"{paid_out} withdrawal(s) finished"
                )
            if every is None:
                if result.failed:
                    raise SystemExit(1)
                return
            time.sleep(every)
    except KeyboardInterrupt:
        return


def _catch_up_earnings() -> None:
    """The pass's earnings catch-up, last and on its own: its sums are a cache of the
    ledger, so a failure loses nothing and must not stop the pass (its heartbeat)."""
    from soma.earnings.service import CATCH_UP_SECONDS, catch_up

    try:
        catch_up(seconds=CATCH_UP_SECONDS)
    except SQLAlchemyError:
        db.session.rollback()
        current_app.logger.exception("sweep: the earnings catch-up failed; next pass")


def _pass_detail(result, paid_out: int, stuck: list[int]) -> str:
    """What a sweep pass did, as its heartbeat records it."""
    detail = (
        f"{result.completed} completed, {result.ended_early} ended early, {result.failed} "
        f"failed; {paid_out} withdrawal(s) finished"
    )
    return detail + (f"; {len(stuck)} processing too long" if stuck else "")


@soma_cli.command("reconcile-mpesa")
@click.option("--payment", type=click.IntRange(min=1, max=2**63 - 1), help="An unmatched payment.")
@click.option("--purchase", type=click.IntRange(min=1, max=2**63 - 1), help="The purchase it paid.")
def reconcile_mpesa(payment: int | None, purchase: int | None) -> None:
    """Match M-Pesa payments kept as unmatched to the purchases they paid, and credit them.

    With --payment and --purchase, match that payment to that purchase. Without,
    match each unmatched payment that exactly one purchase fits (same phone and
    amount, made in the day before it reached us); list the others.
    """
    from soma.purchases import mpesa

    if (payment is None) != (purchase is None):
        raise click.UsageError("give both --payment and --purchase, or neither")
    if payment is not None:
        try:
            credited = mpesa.match(payment, purchase, "cli")
        except mpesa.MatchRefused as refused:
            raise click.ClickException(refused.message) from None
        click.echo(f"Payment {payment} credited purchase #{credited.id}.")
        return
    done = mpesa.reconcile("cli")
    if not done:
        click.echo("No unmatched M-Pesa payments.")
    for unmatched, credited, what in done:
        target = f" → purchase #{credited.id}" if credited else ""
        click.echo(
            f"  {unmatched.receipt}  KES {unmatched.amount_minor:,}  {unmatched.phone or '?'}"
            f"{target}: {what}"
        )


@soma_cli.command("metrics")
def metrics_fold() -> None:
    """Sum the ledger's entries since the metrics checkpoint into the daily rollup that
    /admin/ reads (a view does it too, a batch at a time): run after a large import, or
    from cron, so that no view has a long tail to read."""
    from soma.admin import metrics

    started = time.perf_counter()
    before = db.session.scalar(
        db.select(metrics.MetricsCheckpoint.through_entry_id).where(
            metrics.MetricsCheckpoint.id == 1
        )
    )
    through = metrics.catch_up()
    click.echo(
        f"metrics: summed through entry {through:,} (from {before or 0:,}) "
        f"in {time.perf_counter() - started:.1f} s"
    )


@soma_cli.command("earnings")
def earnings_catch_up() -> None:
    """Sum every teacher's class payments into their earnings checkpoint, as the sweeper
    does a batch at a time: run after an upgrade or a large import, so that no teacher's
    first look at /earnings reads years of payments."""
    from soma.earnings import service as earnings

    started = time.perf_counter()
    moves = 0
    # Down to the views' own threshold: what is left is read in a fraction of a millisecond.
    # (A pass moves at least one wallet while any is due, unless another process holds
    # every one it found: that one is moving them.)
    while moved := earnings.catch_up(behind=earnings.CHECKPOINT_AFTER, wallets=100):
        moves += len(moved)
    left = len(earnings.behind_wallets(earnings.CHECKPOINT_AFTER, limit=100))
    click.echo(
        f"earnings: {moves:,} checkpoint move(s) in {time.perf_counter() - started:.1f} s; "
        + (
            f"no teacher is {earnings.CHECKPOINT_AFTER} postings or more behind"
            if not left
            else f"{left} teacher(s) still behind, being moved by another process"
        )
    )
