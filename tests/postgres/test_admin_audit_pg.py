"""One audit run at a time, with admins starting runs at the same instant."""

import threading

from sqlalchemy import func, select

from soma.admin import audit_runs as runs
from soma.extensions import db
from soma.models import AdminAction, AuditRun
from tests.builders import make_user
from tests.helpers import THREAD_TIMEOUT

STARTERS = 8


def test_admins_starting_at_once_queue_exactly_one_run(app, wide_app):
    with app.app_context():
        admin_ids = [make_user("admin").id for _ in range(STARTERS)]
    barrier = threading.Barrier(STARTERS)
    outcomes: list = [None] * STARTERS

    def start(index: int) -> None:
        with wide_app.app_context():
            admin = db.session.get(runs.User, admin_ids[index])
            db.session.commit()  # nothing held while waiting at the line
            barrier.wait(timeout=THREAD_TIMEOUT)
            try:
                outcomes[index] = ("started", runs.start(admin))
            except runs.AuditBusy:
                outcomes[index] = ("busy", None)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=start, args=(i,)) for i in range(STARTERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)

    started = [value for kind, value in outcomes if kind == "started"]
    assert len(started) == 1
    assert sum(kind == "busy" for kind, _ in outcomes) == STARTERS - 1
    with app.app_context():
        [run] = db.session.scalars(select(AuditRun)).all()
        assert (run.id, run.status) == (started[0], "queued")
        assert db.session.scalar(select(func.count()).select_from(AdminAction)) == 1
