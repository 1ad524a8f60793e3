"""The incremental audit: a clean run checkpoints what it proved; the next checks only what
came after (and the checkpoint itself); `--full` rechecks everything from the start.

Corruptions are made with raw SQL past the append-only triggers, as only someone
bypassing the ledger could. A row edited BEFORE the last checkpoint is, by design, only
caught by a full run (the incremental one takes the checkpoint's word for it); one edited
or added AFTER it is caught by both.
"""

from sqlalchemy import func, select, text

from soma import ledger
from soma.audit import Violation, audit, checkpoint, run_audit
from soma.audit.checkpoint import UNSEALED
from soma.extensions import db
from soma.models import (
    AuditCheckpoint,
    AuditCheckpointWallet,
    AuditRun,
    JournalEntry,
    Posting,
    Wallet,
)
from tests.builders import (
    make_class,
    make_funded_user,
    make_teacher,
    make_user,
    make_withdrawal,
    paid_purchase,
)
from tests.helpers import audit_scope, csrf_from, post_form


def allow_edits(*tables: str) -> None:
    """Let this transaction edit append-only `tables` (see test_audit_checks)."""
    if db.session.connection().dialect.name == "postgresql":
        db.session.execute(text("SET LOCAL session_replication_role = replica"))
        return
    for table in tables:
        db.session.execute(text(f"DROP TRIGGER IF EXISTS {table}_append_only_update"))


def activity(tag: str) -> dict[str, int]:
    """A purchase, a finished class, a gift and a withdrawal, by people of their own."""
    student = make_funded_user(200)
    teacher = make_teacher(3000)
    friend = make_user("student")
    paid_purchase(student)
    make_class(student, teacher, "completed")
    with ledger.atomic():
        gift = ledger.transfer(student.id, friend.id, 5, key=f"gift:{tag}")
    make_withdrawal(teacher)
    db.session.commit()
    return {"student": student.id, "teacher": teacher.id, "friend": friend.id, "gift": gift.id}


def wallet_of(user_id: int) -> Wallet:
    return db.session.scalar(select(Wallet).where(Wallet.user_id == user_id))


def checkpoints() -> list[AuditCheckpoint]:
    return db.session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id)).all()


def test_incremental_and_full_agree_on_a_clean_ledger_and_checkpoints_chain(ctx, runner):
    activity("one")
    first = runner.invoke(args=["soma", "audit"])
    assert first.exit_code == 0, first.output
    assert "Audit passed: every ledger invariant holds (full run)." in first.stdout  # none yet

    people = activity("two")
    second = runner.invoke(args=["soma", "audit"])
    assert second.exit_code == 0, second.output
    assert "(incremental run)" in second.stdout
    assert run_audit() == run_audit(full=True) == []

    one, two = checkpoints()
    assert (one.full, two.full) == (True, False)
    assert (two.previous_id, two.previous_hash) == (one.id, one.hash)
    assert two.through_entry_id == db.session.scalar(select(func.max(JournalEntry.id)))
    # Only the newest keeps its wallet rows: each wallet's head and balances, as they are.
    rows = db.session.scalars(select(AuditCheckpointWallet)).all()
    assert {row.checkpoint_id for row in rows} == {two.id}
    assert len(rows) == two.wallets == db.session.scalar(select(func.count(Wallet.id)))
    student = wallet_of(people["student"])
    [row] = [row for row in rows if row.wallet_id == student.id]
    assert (row.seq, row.hash, row.available, row.locked) == (
        student.head_seq,
        student.head_hash,
        student.available,
        student.locked,
    )
    assert [run.full for run in db.session.scalars(select(AuditRun).order_by(AuditRun.id))] == [
        True,
        False,
    ]

    full = runner.invoke(args=["soma", "audit", "--full"])
    assert full.exit_code == 0 and "(full run)" in full.stdout
    assert checkpoints()[-1].full is True


def test_an_edit_before_the_checkpoint_is_caught_by_full_only(ctx):
    people = activity("one")
    assert audit().checkpoint_id is not None
    activity("two")
    allow_edits("postings")
    db.session.execute(
        text("UPDATE postings SET amount = amount + 1 WHERE entry_id = :gift AND amount > 0"),
        {"gift": people["gift"]},
    )
    db.session.commit()
    # The incremental run takes the checkpoint's word for what it proved: by design.
    assert run_audit() == []
    found = run_audit(full=True)
    assert (
        Violation("entry-unbalanced", f"entry {people['gift']} postings sum to 1, not 0") in found
    )
    assert "posting-chain" in {violation.check for violation in found}
    # A clean incremental run does not hide it from the next full one.
    assert audit().violations == []
    assert "entry-unbalanced" in {violation.check for violation in run_audit(full=True)}


def test_an_edit_after_the_checkpoint_is_caught_by_the_incremental_run(ctx):
    activity("one")
    assert audit().checkpoint_id is not None
    people = activity("two")
    allow_edits("postings", "journal_entries")
    db.session.execute(
        text("UPDATE postings SET amount = amount + 1 WHERE entry_id = :gift AND amount > 0"),
        {"gift": people["gift"]},
    )
    db.session.execute(
        text("UPDATE journal_entries SET memo = 'x', tokens = 9 WHERE id = :gift"),
        {"gift": people["gift"]},
    )
    db.session.commit()
    found = run_audit()
    assert (
        Violation("entry-unbalanced", f"entry {people['gift']} postings sum to 1, not 0") in found
    )
    assert {"posting-chain", "entry-tokens-mismatch", "entry-value-mismatch"} <= {
        violation.check for violation in found
    }
    assert found == run_audit(full=True)
    # A failed run writes no checkpoint.
    before = len(checkpoints())
    assert audit().checkpoint_id is None
    assert len(checkpoints()) == before


def test_a_balance_edited_before_the_checkpoint_is_caught_by_both(ctx):
    """A wallet's row can change with no entry: every run checks every wallet."""
    people = activity("one")
    assert audit().checkpoint_id is not None
    db.session.execute(
        text("UPDATE wallets SET available = available + 7 WHERE user_id = :id"),
        {"id": people["friend"]},
    )
    db.session.commit()
    friend = wallet_of(people["friend"])
    expected = Violation(
        "balance-mismatch",
        f"wallet {friend.id} (user {people['friend']}) holds 12 available and 0 locked, "
        "but its postings sum to 5 and 0",
    )
    assert expected in run_audit()
    assert expected in run_audit(full=True)


def test_a_posting_added_past_a_head_is_caught_by_the_incremental_run(ctx):
    """A posting slipped in after the checkpoint, below no new entry id: its seq is past
    its wallet's checkpointed head, so its entry is in scope."""
    people = activity("one")
    assert audit().checkpoint_id is not None
    friend = wallet_of(people["friend"])
    db.session.execute(
        text(
            "INSERT INTO postings (entry_id, wallet_id, bucket, amount, available_after, "
            "locked_after, kind, created_at, seq, hash) "
            "SELECT entry_id, wallet_id, 'locked', 3, available_after, locked_after + 3, kind, "
            "created_at, seq + 1, hash FROM postings WHERE wallet_id = :w AND seq = :s"
        ),
        {"w": friend.id, "s": friend.head_seq},
    )
    db.session.commit()
    found = run_audit()
    assert (
        Violation("entry-unbalanced", f"entry {people['gift']} postings sum to 3, not 0") in found
    )
    assert (
        Violation(
            "balance-mismatch",
            f"wallet {friend.id} (user {people['friend']}) holds 5 available and 0 locked, "
            "but its postings sum to 5 and 3",
        )
        in found
    )
    assert found == run_audit(full=True)


def test_an_edited_checkpoint_is_caught_and_the_run_falls_back_to_full(ctx):
    people = activity("one")
    first = audit().checkpoint_id
    activity("two")
    second = audit().checkpoint_id
    assert (first, second) != (None, None)
    # Claim more than it proved, to hide later entries from the next run.
    db.session.execute(
        text("UPDATE audit_checkpoints SET through_entry_id = 10000 WHERE id = :c"),
        {"c": second},
    )
    allow_edits("postings")
    db.session.execute(
        text("UPDATE postings SET amount = amount + 1 WHERE entry_id = :gift AND amount > 0"),
        {"gift": people["gift"]},
    )
    db.session.commit()
    result = audit()
    assert result.full is True  # a checkpoint that does not hold is not trusted
    assert (
        Violation(
            "audit-checkpoint",
            UNSEALED.format(second),
        )
        in result.violations
    )
    assert (
        Violation("entry-unbalanced", f"entry {people['gift']} postings sum to 1, not 0")
        in result.violations
    )
    assert result.checkpoint_id is None


def test_an_edited_checkpoint_wallet_row_or_a_broken_chain_of_checkpoints_is_caught(ctx):
    people = activity("one")
    first = audit().checkpoint_id
    second = audit().checkpoint_id
    student = wallet_of(people["student"])
    db.session.execute(
        text(
            "UPDATE audit_checkpoint_wallets SET available = available + 5 "
            "WHERE checkpoint_id = :c AND wallet_id = :w"
        ),
        {"c": second, "w": student.id},
    )
    db.session.commit()
    assert run_audit() == [
        Violation(
            "audit-checkpoint",
            f"checkpoint {second}'s {db.session.scalar(select(func.count(Wallet.id)))} "
            f"wallet row(s) are not the "
            f"{db.session.get(AuditCheckpoint, second).wallets} it hashed",
        )
    ]
    db.session.execute(
        text("UPDATE audit_checkpoint_wallets SET available = available - 5 WHERE wallet_id = :w"),
        {"w": student.id},
    )
    db.session.execute(text("UPDATE audit_checkpoints SET hash = 'x' WHERE id = :c"), {"c": first})
    db.session.commit()
    found = run_audit()
    assert found == [
        Violation(
            "audit-checkpoint",
            UNSEALED.format(first),
        ),
        Violation("audit-checkpoint", f"checkpoint {second} does not follow checkpoint {first}"),
    ]


def test_the_admin_runs_incremental_by_default_and_full_on_request(app, client, auth):
    app.config["AUDIT_RUN_INLINE"] = True
    auth.login_as("admin")
    for full in (False, False, True):
        data = {"full": "yes"} if full else {}
        asked = post_form(client, "/admin/audit", data)
        page = asked.get_data(as_text=True)
        assert ("Run a full audit?" if full else "Run the audit?") in page
        fields = {"csrf_token": csrf_from(page), "confirmed": "yes", **data}
        client.post("/admin/audit", data=fields)
    with app.app_context():
        runs = db.session.scalars(select(AuditRun).order_by(AuditRun.id)).all()
        # The first had no checkpoint to start from: it ran in full, and says so.
        assert [(run.status, run.full) for run in runs] == [
            ("passed", True),
            ("passed", False),
            ("passed", True),
        ]
        assert len(checkpoints()) == 3
    page = client.get(f"/admin/audit?run={runs[1].id}").get_data(as_text=True)
    assert "Incremental: what the last checkpoint had not proven" in page
    page = client.get(f"/admin/audit?run={runs[2].id}").get_data(as_text=True)
    assert "Full: every ledger row from the start" in page


def test_an_incremental_run_reads_only_the_entries_since_its_checkpoint(ctx):
    """The scope of an incremental run is the entries since the checkpoint: none on a
    ledger that has not moved, so a run reads no posting of the past."""
    activity("one")
    assert audit().checkpoint_id is not None
    scope, entries, late = audit_scope()
    assert (entries, late, scope.late_from) == (set(), set(), None)
    people = activity("two")
    scope, entries, late = audit_scope()
    newest = set(
        db.session.scalars(
            select(JournalEntry.id).where(JournalEntry.id > scope.through("through_entry_id"))
        )
    )
    assert entries == newest and people["gift"] in entries
    assert (late, scope.late_from) == (set(), None)
    assert db.session.scalar(select(func.count(Posting.id))) > 2 * len(entries)


def test_entries_committed_after_the_checkpoint_with_smaller_ids_are_in_scope_exactly(ctx):
    """An entry whose transaction drew its id before the checkpoint's snapshot and
    committed after it has an id the checkpoint covers, yet postings past its wallets'
    heads: it is in scope (late), and an entry between it and the checkpoint's id that the
    checkpoint did prove is not counted again. Made here as that race leaves a checkpoint:
    a hold H, a hold M and a transfer T after a checkpoint, which is then sealed as if its
    snapshot had seen T's id and M's postings but not H's or T's."""
    people = activity("late")
    payer, other = make_funded_user(100), make_funded_user(100)
    sealed = audit().checkpoint_id
    assert sealed is not None
    with ledger.atomic():
        held = ledger.hold(payer.id, 7, key="late:h")
    with ledger.atomic():
        proven = ledger.hold(other.id, 9, key="late:m")
    with ledger.atomic():
        moved = ledger.transfer(payer.id, people["friend"], 3, key="late:t")
    assert held.id < proven.id < moved.id
    # The checkpoint's snapshot saw M (its wallet row at M's posting) and T's id.
    seen = wallet_of(other.id)
    db.session.execute(
        text(
            "UPDATE audit_checkpoint_wallets SET seq = :seq, hash = :hash, "
            "available = :available, locked = :locked "
            "WHERE checkpoint_id = :c AND wallet_id = :w"
        ),
        {
            "seq": seen.head_seq,
            "hash": seen.head_hash,
            "available": seen.available,
            "locked": seen.locked,
            "c": sealed,
            "w": seen.id,
        },
    )
    resealed = db.session.get(AuditCheckpoint, sealed)
    resealed.through_entry_id = moved.id
    resealed.wallets, resealed.wallets_digest = checkpoint.wallets_digest(sealed)
    resealed.hash = checkpoint.checkpoint_hash(resealed)
    db.session.commit()

    scope, entries, late = audit_scope()
    assert scope.late_from == held.id
    assert entries == late == {held.id, moved.id}
    # M's 9 locked tokens are the checkpoint's: counted once, so every wallet holds.
    assert run_audit() == []
    # An edit of a late entry's posting is the incremental run's to catch.
    allow_edits("postings")
    db.session.execute(
        text("UPDATE postings SET amount = 8 WHERE entry_id = :e AND bucket = 'locked'"),
        {"e": held.id},
    )
    db.session.commit()
    found = run_audit()
    assert Violation("entry-unbalanced", f"entry {held.id} postings sum to 1, not 0") in found


def test_a_posting_numbered_before_one_is_refused_by_the_database(ctx):
    """Postings are numbered from 1: one numbered 0 would sit before every checkpointed
    head, where an incremental run does not look, so the database refuses it."""
    import pytest
    from sqlalchemy.exc import DBAPIError

    people = activity("zero")
    assert audit().checkpoint_id is not None
    friend = wallet_of(people["friend"])
    with pytest.raises(DBAPIError):
        db.session.execute(
            text(
                "INSERT INTO postings (entry_id, wallet_id, bucket, amount, available_after, "
                "locked_after, kind, created_at, seq, hash) "
                "SELECT entry_id, wallet_id, 'locked', 3, available_after, locked_after + 3, "
                "kind, created_at, 0, hash FROM postings WHERE wallet_id = :w AND seq = :s"
            ),
            {"w": friend.id, "s": friend.head_seq},
        )
    db.session.rollback()
    assert (
        db.session.scalar(
            select(func.count()).select_from(Posting).where(Posting.wallet_id == friend.id)
        )
        == friend.head_seq
    )
    assert run_audit() == [] and run_audit(full=True) == []


def test_a_gift_committed_after_the_checkpoint_with_a_smaller_id_is_still_in_scope(ctx):
    """A gift whose transaction drew its id before the checkpoint's snapshot and committed
    after it (here: a row given a smaller id, and no entry) is brought in by its time."""
    from soma.models import Gift

    people = activity("late")
    assert audit().checkpoint_id is not None
    db.session.add(
        Gift(
            id=-7,
            key="late-gift",
            sender_id=people["student"],
            recipient_id=people["friend"],
            tokens=4,
        )
    )
    db.session.commit()
    expected = Violation(
        "gift-not-transferred-once", "gift -7 of 4 tokens has 0 GIFT entries moving 0 tokens"
    )
    assert expected in run_audit()
    assert expected in run_audit(full=True)


# The checkpoint's MAC ------------------------------------------------------------------------


def forge_checkpoint(checkpoint_id: int, wallet_id: int, tokens: int, mac) -> None:
    """Do what someone who can write the database could: invent `tokens` in a wallet, then
    make checkpoint `checkpoint_id` say it proved that balance (its wallet row, its wallet
    digest) and seal it with `mac` (a function of the checkpoint)."""
    db.session.execute(
        text("UPDATE wallets SET available = available + :t WHERE id = :w"),
        {"t": tokens, "w": wallet_id},
    )
    db.session.execute(
        text(
            "UPDATE audit_checkpoint_wallets SET available = available + :t "
            "WHERE checkpoint_id = :c AND wallet_id = :w"
        ),
        {"t": tokens, "c": checkpoint_id, "w": wallet_id},
    )
    forged = db.session.get(AuditCheckpoint, checkpoint_id)
    forged.wallets, forged.wallets_digest = checkpoint.wallets_digest(checkpoint_id)
    forged.hash = mac(forged)
    db.session.commit()


def unkeyed_hash(forged: AuditCheckpoint) -> str:
    """The checkpoint's hash as it was before it was keyed: SHA-256 of its fields, which
    anyone who can read the code and the database can recompute."""
    import hashlib

    fields = (
        forged.previous_hash,
        forged.previous_id,
        forged.id,
        forged.created_at.isoformat(),
        int(forged.full),
        *(getattr(forged, name) for name in checkpoint.THROUGH),
        forged.wallets,
        forged.wallets_digest,
    )
    return hashlib.sha256("|".join(map(str, fields)).encode()).hexdigest()


def test_a_checkpoint_forged_without_the_key_does_not_hide_invented_tokens(ctx):
    people = activity("one")
    audit()
    newest = audit().checkpoint_id  # incremental: it follows the first
    student = wallet_of(people["student"])
    forge_checkpoint(newest, student.id, 1000, unkeyed_hash)
    assert db.session.get(AuditCheckpoint, newest).hash == unkeyed_hash(
        db.session.get(AuditCheckpoint, newest)
    )

    result = audit()
    assert result.full is True  # the MAC failed: nothing the checkpoint says is trusted
    invented = Violation(
        "balance-mismatch",
        f"wallet {student.id} (user {people['student']}) holds "
        f"{student.available} available and 0 locked, but its postings sum to "
        f"{student.available - 1000} and 0",
    )
    assert result.violations == [
        Violation(
            "audit-checkpoint",
            UNSEALED.format(newest),
        ),
        invented,
    ]
    assert result.checkpoint_id is None
    assert checkpoints()[-1].id == newest


def test_only_the_key_seals_a_checkpoint(ctx):
    """The same forgery sealed with the app's own key is trusted by an incremental run
    (which is why the key is kept out of the database); `--full` still finds it."""
    people = activity("one")
    newest = audit().checkpoint_id
    student = wallet_of(people["student"])
    forge_checkpoint(newest, student.id, 1000, checkpoint.checkpoint_hash)
    assert run_audit() == []
    assert [violation.check for violation in run_audit(full=True)] == ["balance-mismatch"]


def test_a_new_secret_key_sends_the_audit_back_to_a_full_run_until_one_is_clean(app, ctx):
    activity("one")
    first = audit().checkpoint_id
    app.config["SECRET_KEY"] = "a-new-secret-key"
    activity("two")
    # Every checkpoint was sealed under the old key: none is trusted.
    result = audit()
    assert result.full is True
    assert result.violations == [
        Violation(
            "audit-checkpoint",
            UNSEALED.format(first),
        )
    ]
    assert result.checkpoint_id is None
    assert audit().full is True  # still: nothing was written
    # A full run does not read the checkpoint; clean, it starts the chain under the new key.
    fresh = audit(full=True)
    assert (fresh.violations, fresh.full) == ([], True)
    activity("three")
    after = audit()
    assert (after.violations, after.full) == ([], False)
    assert checkpoints()[-1].previous_id == fresh.checkpoint_id
