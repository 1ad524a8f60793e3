"""The timer poll's cache is told when a class or a user's session changes.

On PostgreSQL, a trigger on `class_sessions` (any update or delete) and one on `users`
(an update of `session_version` or `role`, a delete) NOTIFY `soma_timer` with
`c:<class id>` or `u:<user id>`; each worker's cache of timer reads listens and drops
what it names (soma.classes.poll_cache). Delivered when the change commits. Nothing on
SQLite, where the poll always reads.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-01
"""

from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION soma_timer_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('soma_timer', TG_ARGV[0] || ':' || OLD.id);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER class_sessions_timer_notify AFTER UPDATE OR DELETE ON class_sessions "
        "FOR EACH ROW EXECUTE FUNCTION soma_timer_notify('c')"
    )
    op.execute(
        "CREATE TRIGGER users_timer_notify AFTER UPDATE OF session_version, role OR DELETE "
        "ON users FOR EACH ROW EXECUTE FUNCTION soma_timer_notify('u')"
    )


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER users_timer_notify ON users")
    op.execute("DROP TRIGGER class_sessions_timer_notify ON class_sessions")
    op.execute("DROP FUNCTION soma_timer_notify()")
