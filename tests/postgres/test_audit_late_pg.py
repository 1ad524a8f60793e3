"""An entry that commits after the audit's snapshot, with an id smaller than the newest
the audit saw: the race the incremental run's "late" entries are for (soma.audit.
checkpoint), made for real, with a transaction held open in another thread."""

import threading

from sqlalchemy import select

from soma import ledger
from soma.audit import audit, run_audit
from soma.extensions import db
from soma.models import AuditCheckpoint, Wallet
from tests.builders import make_funded_user
from tests.helpers import THREAD_TIMEOUT, audit_scope


def test_an_entry_committed_after_the_audits_snapshot_is_checked_once_by_the_next_run(
    app, wide_app
):
    with app.app_context():
        payer, other = make_funded_user(100).id, make_funded_user(100).id
        db.session.commit()
    opened, commit = threading.Event(), threading.Event()
    late: dict = {}

    def hold_and_wait() -> None:
        """A hold in a transaction that stays open until told to commit."""
        with wide_app.app_context():
            try:
                late["id"] = ledger.hold(payer, 7, key="late-pg:hold").id
                opened.set()
                commit.wait(THREAD_TIMEOUT)
                db.session.commit()
            except BaseException as error:  # seen by the test, not lost in the thread
                late["error"] = error
                opened.set()
            finally:
                db.session.remove()

    thread = threading.Thread(target=hold_and_wait)
    thread.start()
    try:
        assert opened.wait(THREAD_TIMEOUT) and "error" not in late
        with app.app_context():
            # Committed before the audit, with a larger id than the open hold's.
            with ledger.atomic():
                proven = ledger.hold(other, 9, key="late-pg:proven").id
            assert late["id"] < proven
            sealed = audit().checkpoint_id
            assert sealed is not None
    finally:
        commit.set()
        thread.join(THREAD_TIMEOUT)
    assert not thread.is_alive() and "error" not in late

    with app.app_context():
        made = db.session.get(AuditCheckpoint, sealed)
        assert made.through_entry_id >= proven > late["id"]
        payer_wallet = db.session.scalar(select(Wallet).where(Wallet.user_id == payer))
        assert (payer_wallet.available, payer_wallet.locked) == (93, 7)
        scope, in_scope, kept_late = audit_scope()
        assert scope.late_from == late["id"]
        # The late hold is checked; the proven one, between it and the checkpoint's id,
        # is not counted again (its 9 locked tokens are in the checkpoint's wallet row).
        assert in_scope == kept_late == {late["id"]}
        assert run_audit() == [] and run_audit(full=True) == []
        assert audit().checkpoint_id is not None  # and the next checkpoint includes it
        scope, _, kept_late = audit_scope()
        assert (scope.late_from, kept_late) == (None, set())
