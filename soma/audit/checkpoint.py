"""Where the audit starts from: the last checkpoint, the scope it leaves, and the next one.

A clean run ends by writing an AuditCheckpoint (soma.models.audit) of the snapshot it
checked: every wallet's chain head and balances, and the newest id of each table the
checks scope by id. The next incremental run proves only what came after:

* The checkpoint itself: its MAC is recomputed from its fields, its wallet rows and the
  hash of the checkpoint before it, for the newest and each back to the newest full one;
  any mismatch is a violation, and the run then falls back to a full one (nothing it
  says is trusted).
* The postings in scope (a temporary table, holding them whole): each wallet's past its
  checkpointed head, found through the (wallet_id, seq) index. The checks of postings
  (balances, chains, heads) read them from there. The entries in scope: those with an id
  past the checkpoint's, and every entry of a posting in scope. Both, because an entry
  whose transaction drew its id before the checkpoint's snapshot but committed after it
  (a "late" entry) has a smaller id, yet its postings come after its wallets' heads (a
  wallet's postings are numbered under its row lock). The late ones are kept in another
  temporary table, usually empty; the rest is a range of ids, read in index order (a
  few thousand ids looked up one by one cost each check several times as much). An
  entry with no posting at all (itself a violation) is seen only when its id is past
  the checkpoint's.
* Each wallet's balances are its checkpointed ones plus its postings since, and its chain
  continues from the checkpointed head (soma.audit.ledger).
* The objects whose rows can change without a new entry are scoped per check, as each
  module's docstring says: by id past the checkpoint, by the entries in scope, by
  `updated_at` since the checkpoint (less CHANGED_MARGIN, for transactions that stamped
  their rows before the snapshot and committed after it), and by status where a row still
  open can change.

What an incremental run does not see: an edit, made after a checkpoint, of a row the
checkpoint had already proven (an entry, a posting, a finished class, the earnings of a
wallet with no payment since). `--full` rechecks everything from the start; run it now
and then (the admin console offers it too).

The checkpoint's hash is a MAC: HMAC-SHA256 under a key derived from the app's
SECRET_KEY with a label of its own (_key()), so someone who can write the database but
has not the key cannot forge a checkpoint that agrees with a wallet row they raised;
the MAC fails and the run checks everything. Why SECRET_KEY and not a setting of its
own: it is already required wherever the audit runs (the CLI and the admin console are
the same app), it is never in the database, and whoever holds it can already sign an
admin's session, so a second secret would add one more thing to lose without keeping
out anyone the first does not. Changing it fails every checkpoint's MAC: incremental
runs report it and run in full until a clean `--full` run seals a new one (safe, only
slower).

On PostgreSQL the whole run reads one REPEATABLE READ snapshot, so the checkpoint it
writes says exactly what its checks saw. SQLite has no concurrent writers to speak of.
"""

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import (
    BigInteger,
    Column,
    MetaData,
    Table,
    and_,
    any_,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.exc import IntegrityError

from soma.audit.violation import Violation
from soma.extensions import db
from soma.ledger.core import chain_link
from soma.models import (
    AuditCheckpoint,
    AuditCheckpointWallet,
    ClassSession,
    Gift,
    JournalEntry,
    Posting,
    Purchase,
    PurchaseReversal,
    Wallet,
    Withdrawal,
)

# Rows stamped up to this long before a checkpoint's snapshot count as changed after it.
CHANGED_MARGIN = timedelta(hours=1)
# Wallet rows read at a time while a checkpoint is hashed.
HASH_BATCH = 5000

# The postings and entries an incremental run checks: temporary tables, per connection.
SCOPE_METADATA = MetaData()
# The postings in scope are copied whole (the columns the checks read, named as in
# postings): the checks of postings read this small, analyzed table instead of probing the
# journal's index once per posting (and sorting what they found) to read them again.
SCOPED_COLUMNS = (
    "id", "entry_id", "wallet_id", "seq", "bucket", "amount", "available_after",
    "locked_after", "hash",
)  # fmt: skip
SCOPE_POSTINGS = Table(
    "audit_scope_postings",
    SCOPE_METADATA,
    *(
        Column(name, column.type, primary_key=name == "id", autoincrement=False)
        for name, column in ((name, Posting.__table__.c[name]) for name in SCOPED_COLUMNS)
    ),
    prefixes=["TEMPORARY"],
)
# The late entries in scope (see the module's docstring): at or before the checkpoint's
# entry id, with postings past their wallets' heads.
SCOPE_ENTRIES = Table(
    "audit_scope_entries",
    SCOPE_METADATA,
    Column("entry_id", BigInteger, primary_key=True, autoincrement=False),
    prefixes=["TEMPORARY"],
)

# Each wallet's postings past its checkpointed head, found by the (wallet_id, seq) index
# one wallet at a time (LATERAL on PostgreSQL; SQLite's nested loop does it by itself).
# (Its names are SCOPED_COLUMNS: constants, not input.)
PAST_HEADS = (
    f"INSERT INTO audit_scope_postings ({', '.join(SCOPED_COLUMNS)})\n"
    f"SELECT {', '.join(f'p.{name}' for name in SCOPED_COLUMNS)}\n"
    "FROM wallets w\n"
    "LEFT JOIN audit_checkpoint_wallets h"
    " ON h.checkpoint_id = :checkpoint AND h.wallet_id = w.id\n"
)
PAST_HEADS_JOIN = {
    # OFFSET 0 keeps the planner from flattening the subquery into one scan of postings.
    "postgresql": """CROSS JOIN LATERAL (SELECT * FROM postings
        WHERE postings.wallet_id = w.id AND postings.seq > COALESCE(h.seq, 0) OFFSET 0) p""",
    "sqlite": "JOIN postings p ON p.wallet_id = w.id AND p.seq > COALESCE(h.seq, 0)",
}

THROUGH = {
    "through_entry_id": JournalEntry.id,
    "through_class_id": ClassSession.id,
    "through_purchase_id": Purchase.id,
    "through_reversal_id": PurchaseReversal.id,
    "through_gift_id": Gift.id,
    "through_withdrawal_id": Withdrawal.id,
}

# A checkpoint whose MAC fails: edited, forged without the key, or sealed under another key.
UNSEALED = (
    "checkpoint {}'s content does not match its seal (changed, forged, or sealed under "
    "another SECRET_KEY)"
)


@dataclass(frozen=True)
class Scope:
    """What a run checks: everything (`checkpoint` None), or what came after `checkpoint`."""

    checkpoint: AuditCheckpoint | None = None
    # The smallest late entry's id (see the module's docstring); None when there is none.
    late_from: int | None = None

    @property
    def full(self) -> bool:
        return self.checkpoint is None

    @property
    def since(self) -> datetime | None:
        """Rows stamped at or after this changed after the checkpoint (with a margin)."""
        return None if self.full else self.checkpoint.created_at - CHANGED_MARGIN

    def through(self, name: str) -> int:
        return 0 if self.full else getattr(self.checkpoint, name)

    def entries(self, column):
        """SQL: `column` (an entry id) is in scope: past the checkpoint's entry id, or late.
        Late entries are bounded below by the smallest, so the index reads a range either
        way (an OR alone would have the planner read the whole index, filtering)."""
        if self.full:
            return true()
        newer = column > self.through("through_entry_id")
        if self.late_from is None:
            return newer
        late = among(column, select(SCOPE_ENTRIES.c.entry_id))
        return and_(column >= self.late_from, or_(newer, late))

    def postings(self):
        """The postings in scope, to select from: all of them (the postings table), or
        those past their wallets' checkpointed heads (a copy, with the same columns
        SCOPED_COLUMNS; see SCOPE_POSTINGS)."""
        return Posting.__table__ if self.full else SCOPE_POSTINGS

    def newer(self, column, name: str):
        """SQL: `column` (an id) is past the checkpoint's `name` (always, in a full run)."""
        return true() if self.full else column > self.through(name)

    def changed(self, column):
        """SQL: `column` (a timestamp) is since the checkpoint (always, in a full run)."""
        return true() if self.full else column >= self.since

    def named(self, column, reference_type: str):
        """SQL: `column` (an object's id) is named by an entry in scope of `reference_type`."""
        if self.full:
            return true()
        return column.in_(
            select(JournalEntry.reference_id)
            .where(JournalEntry.reference_type == reference_type, self.entries(JournalEntry.id))
            .correlate(None)
        )

    def heads(self):
        """A subquery of the checkpoint's wallet rows (none in a full run): wallet_id, seq,
        hash, available, locked."""
        return _wallet_rows(-1 if self.full else self.checkpoint.id).subquery("heads")


def among(column, ids):
    """SQL: `column` is one of the ids `ids` (a select of one column).

    On PostgreSQL `column = ANY(ARRAY(ids))`: the array is read once and `column`'s index
    looked up for each id. With `column IN (ids)` the planner, costing an index lookup as
    a random read from disk, prefers reading the whole table once and hashing the scope
    against it, so an incremental run would read the whole journal (or every posting),
    many times, to check a few thousand rows. SQLite looks ids up by index either way."""
    ids = ids.correlate(None)
    if db.session.get_bind().dialect.name == "postgresql":
        return column == any_(func.array(ids.scalar_subquery()))
    return column.in_(ids)


def _wallet_rows(checkpoint_id: int):
    """A select of a checkpoint's wallet rows: wallet_id, seq, hash, available, locked."""
    return select(
        AuditCheckpointWallet.wallet_id,
        AuditCheckpointWallet.seq,
        AuditCheckpointWallet.hash,
        AuditCheckpointWallet.available,
        AuditCheckpointWallet.locked,
    ).where(AuditCheckpointWallet.checkpoint_id == checkpoint_id)


FULL = Scope()


def latest() -> AuditCheckpoint | None:
    return db.session.scalars(
        select(AuditCheckpoint).order_by(AuditCheckpoint.id.desc()).limit(1)
    ).first()


def begin_snapshot() -> None:
    """Start the run's one transaction: on PostgreSQL a REPEATABLE READ snapshot without
    JIT; on SQLite, with `soma_link` (PostgreSQL has it from migration 0009)."""
    db.session.commit()
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        # JIT compiling costs a large query a second; the audit's run in a fraction of it.
        db.session.execute(text("SET LOCAL jit = off"))
        return
    raw = db.session.connection().connection.driver_connection
    raw.create_function("soma_link", 8, chain_link, deterministic=True)


def prepare(full: bool) -> tuple[Scope, list[Violation]]:
    """The scope of this run and the violations of the checkpoint it starts from (a full
    scope when asked, when there is none, or when it does not hold)."""
    if full:
        return FULL, []
    checkpoint = latest()
    if checkpoint is None:
        return FULL, []
    found = _checkpoints_hold()
    if found:
        return FULL, found
    return Scope(checkpoint, late_from=_fill_scope(checkpoint)), []


def _fill_scope(checkpoint: AuditCheckpoint) -> int | None:
    """The temporary tables of the postings and the late entries in scope (see the
    module's docstring); the smallest late entry's id, None when there is none."""
    connection = db.session.connection()
    postgresql = connection.dialect.name == "postgresql"
    finish_scope()
    SCOPE_METADATA.create_all(connection)
    connection.execute(
        text(PAST_HEADS + PAST_HEADS_JOIN[connection.dialect.name]),
        {"checkpoint": checkpoint.id},
    )
    scoped = SCOPE_POSTINGS.c.entry_id
    connection.execute(
        insert(SCOPE_ENTRIES).from_select(
            ["entry_id"],
            select(scoped).where(scoped <= checkpoint.through_entry_id).distinct(),
        )
    )
    late_from = connection.scalar(select(func.min(SCOPE_ENTRIES.c.entry_id)))
    if postgresql:
        connection.execute(
            text("ANALYZE audit_scope_postings (id, entry_id, wallet_id), audit_scope_entries")
        )
    return late_from


def finish_scope() -> None:
    db.session.execute(text("DROP TABLE IF EXISTS audit_scope_entries"))
    db.session.execute(text("DROP TABLE IF EXISTS audit_scope_postings"))


# Hashes ----------------------------------------------------------------------------------


def wallets_digest(checkpoint_id: int) -> tuple[int, str]:
    """(count, SHA-256) of a checkpoint's wallet rows, streamed in wallet order."""
    digest, count = hashlib.sha256(), 0
    rows = db.session.execute(
        _wallet_rows(checkpoint_id)
        .order_by(AuditCheckpointWallet.wallet_id)
        .execution_options(yield_per=HASH_BATCH)
    )
    for row in rows:
        digest.update(("|".join(map(str, row)) + "\n").encode())
        count += 1
    return count, digest.hexdigest()


# The MAC key's label: the checkpoint key is HMAC-SHA256(SECRET_KEY, this), so no other
# use of SECRET_KEY (sessions, CSRF tokens) ever signs with the same key. A new version
# of the checkpoint's fields gets a new label.
KEY_LABEL = b"soma audit checkpoint MAC v1"


def _key() -> bytes:
    """The checkpoints' MAC key, derived from the app's SECRET_KEY (never stored in the
    database)."""
    secret = current_app.config["SECRET_KEY"]
    if isinstance(secret, str):
        secret = secret.encode()
    if not secret:
        raise RuntimeError("SECRET_KEY is empty: the audit cannot sign its checkpoints")
    return hmac.new(secret, KEY_LABEL, hashlib.sha256).digest()


def checkpoint_hash(checkpoint: AuditCheckpoint) -> str:
    """The MAC (HMAC-SHA256 under _key()) of a checkpoint's fields (its wallet rows by
    their digest) and the hash of the one before it."""
    fields = (
        checkpoint.previous_hash,
        checkpoint.previous_id,
        checkpoint.id,
        checkpoint.created_at.isoformat(),
        int(checkpoint.full),
        *(getattr(checkpoint, name) for name in THROUGH),
        checkpoint.wallets,
        checkpoint.wallets_digest,
    )
    return hmac.new(_key(), "|".join(map(str, fields)).encode(), hashlib.sha256).hexdigest()


def _checkpoints_hold() -> list[Violation]:
    """The checkpoints an incremental run relies on hold: the newest and those back to
    the newest full one (a full run proved everything without its predecessors) each
    carry their MAC and follow the one before (that one's stored hash); the newest's
    wallet rows are the ones it hashed.

    Older checkpoints are history: a checkpoint written under an earlier SECRET_KEY fails
    its MAC, which sends incremental runs to full ones (reported) until a clean
    `--full` run starts the chain again under the new key."""
    found = []
    last_full = db.session.scalar(
        select(func.max(AuditCheckpoint.id)).where(AuditCheckpoint.full.is_(True))
    )
    relied_on = db.session.scalars(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.id >= (last_full or 0))
        .order_by(AuditCheckpoint.id)
        .execution_options(yield_per=500)
    )
    previous = None
    for checkpoint in relied_on:
        if previous is None and checkpoint.previous_id:
            previous = db.session.get(AuditCheckpoint, checkpoint.previous_id)
        expected_id = previous.id if previous else 0
        expected_hash = previous.hash if previous else ""
        if (checkpoint.previous_id, checkpoint.previous_hash) != (expected_id, expected_hash):
            found.append(f"checkpoint {checkpoint.id} does not follow checkpoint {expected_id}")
        if not hmac.compare_digest(checkpoint_hash(checkpoint), checkpoint.hash):
            found.append(UNSEALED.format(checkpoint.id))
        previous = checkpoint
    if previous is not None:
        count, digest = wallets_digest(previous.id)
        if (count, digest) != (previous.wallets, previous.wallets_digest):
            found.append(
                f"checkpoint {previous.id}'s {count} wallet row(s) are not the "
                f"{previous.wallets} it hashed"
            )
    return [Violation("audit-checkpoint", detail) for detail in found]


def write(full: bool, started_at: datetime) -> int | None:
    """Checkpoint what this clean run proved, in its own snapshot; commit; return its id
    (None when another run wrote the next checkpoint first)."""
    previous = latest()
    through = {
        name: func.coalesce(select(func.max(column)).scalar_subquery(), 0)
        for name, column in THROUGH.items()
    }
    values = db.session.execute(select(*(v.label(k) for k, v in through.items()))).one()
    checkpoint = AuditCheckpoint(
        created_at=started_at,
        full=full,
        previous_id=previous.id if previous else 0,
        previous_hash=previous.hash if previous else "",
        **values._asdict(),
    )
    try:
        db.session.add(checkpoint)
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        return None
    db.session.execute(
        insert(AuditCheckpointWallet).from_select(
            ["checkpoint_id", "wallet_id", "seq", "hash", "available", "locked"],
            select(
                literal(checkpoint.id),
                Wallet.id,
                Wallet.head_seq,
                Wallet.head_hash,
                Wallet.available,
                Wallet.locked,
            ),
        )
    )
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(text("ANALYZE audit_checkpoint_wallets"))
    checkpoint.wallets, checkpoint.wallets_digest = wallets_digest(checkpoint.id)
    checkpoint.hash = checkpoint_hash(checkpoint)
    # Only the newest checkpoint's wallet rows are read again.
    db.session.execute(
        delete(AuditCheckpointWallet).where(AuditCheckpointWallet.checkpoint_id != checkpoint.id)
    )
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        return None
    return checkpoint.id


def rollback() -> None:
    """End the run's snapshot without writing anything."""
    db.session.rollback()
