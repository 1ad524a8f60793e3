"""Review of the one-statement fulfilment (core.post_row_credits, service._fulfil_at_once):
the chains it writes, what a refusal leaves, and races with refunds, on PostgreSQL."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text

from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.ledger.core import chain_link
from soma.ledger.errors import IdempotencyConflict
from soma.models import EntryKind, JournalEntry, Posting, Purchase, Wallet
from soma.purchases import reversals, service
from tests.builders import fund, make_user
from tests.buying import sandbox_purchase
from tests.helpers import balances, errors, race


def started(student, tokens: int = 250, bonus: bool = True) -> int:
    """A pending sandbox purchase of `student`'s (a package with its bonus, or custom)."""
    key = f"review-{student.id}-{tokens}-{bonus}-{db.session.scalar(func.random())}"
    return sandbox_purchase(student, tokens, bonus, key)


def chain_problems(wallet_id: int) -> list[str]:
    """Every way the wallet's postings and head differ from what Python's chain code says:
    seq 1..n without gaps, each hash chain_link of the one before, balances running,
    posting ids increasing with seq, and the head (and the hash before it) the last's."""
    db.session.expire_all()
    wallet = db.session.get(Wallet, wallet_id)
    rows = db.session.scalars(
        select(Posting).where(Posting.wallet_id == wallet_id).order_by(Posting.seq)
    ).all()
    problems = []
    previous, last_id = "", 0
    available = locked = 0
    hashes = [""]
    for n, posting in enumerate(rows, start=1):
        if posting.seq != n:
            problems.append(f"posting {posting.id}: seq {posting.seq}, expected {n}")
        if posting.id <= last_id:
            problems.append(f"posting {posting.id} (seq {posting.seq}) after id {last_id}")
        last_id = posting.id
        if posting.bucket == "available":
            available += posting.amount
        else:
            locked += posting.amount
        # (An entry's postings all give the wallet's state after the whole entry.)
        entry_ends = n == len(rows) or rows[n].entry_id != posting.entry_id
        if entry_ends and (posting.available_after, posting.locked_after) != (
            available,
            locked,
        ):
            problems.append(
                f"posting {posting.id}: after ({posting.available_after}, "
                f"{posting.locked_after}), running ({available}, {locked})"
            )
        expected = chain_link(
            previous,
            posting.entry_id,
            wallet_id,
            posting.seq,
            posting.bucket,
            posting.amount,
            posting.available_after,
            posting.locked_after,
        )
        if posting.hash != expected:
            problems.append(f"posting {posting.id} (seq {posting.seq}): hash differs")
        previous = posting.hash
        hashes.append(posting.hash)
    if (wallet.head_seq, wallet.head_hash) != (len(rows), previous):
        problems.append(f"head ({wallet.head_seq}) is not the last posting ({len(rows)})")
    if rows and wallet.prior_hash != hashes[-2]:
        problems.append("prior_hash is not the hash before the head")
    if rows and (wallet.available, wallet.locked) != (
        rows[-1].available_after,
        rows[-1].locked_after,
    ):
        problems.append("the wallet's balances are not its last posting's")
    return problems


def wallets_of_purchase(purchase_id: int) -> set[int]:
    return set(
        db.session.scalars(
            select(Posting.wallet_id)
            .join(JournalEntry, JournalEntry.id == Posting.entry_id)
            .where(
                JournalEntry.reference_type == "purchase", JournalEntry.reference_id == purchase_id
            )
        )
    )


def test_chains_hold_for_credits_with_and_without_bonus_on_a_wallet_with_history(app):
    """A wallet with postings and an open hold (locked > 0) before; then a credit with a
    bonus (two postings in one UPDATE), one without, and one with again: every posting's
    seq and hash are what Python's chain code computes, and ids increase with seq."""
    with app.app_context():
        student = make_user("student")
        fund(student.id, 100)
        with ledger.atomic():
            ledger.hold(student.id, 30, key=f"review:hold:{student.id}")
        assert balances(student.id) == (70, 30)

        touched = set()
        for tokens, bonus in ((250, True), (40, False), (100, True), (17, False), (250, True)):
            purchase_id = started(student, tokens, bonus)
            paid = service.fulfil(purchase_id, "stripe:evt", receipt=f"R-{purchase_id}")
            assert paid.status == "paid"
            touched |= wallets_of_purchase(purchase_id)
        db.session.rollback()

        bonus_of = {
            q.tokens: q.bonus_tokens for q in service.package_quotes() if q.tokens in (100, 250)
        }
        expected = 70 + 250 + bonus_of[250] + 40 + 100 + bonus_of[100] + 17 + 250 + bonus_of[250]
        assert balances(student.id) == (expected, 30)
        wallet_id = db.session.scalar(select(Wallet.id).where(Wallet.user_id == student.id))
        assert wallet_id in touched and len(touched) >= 3
        for touched_id in sorted(touched):
            assert chain_problems(touched_id) == [], touched_id
        assert run_audit() == []


def test_a_first_credit_without_bonus_to_a_new_wallet_chains_from_empty(app):
    with app.app_context():
        student = make_user("student")
        purchase_id = started(student, 40, bonus=False)
        service.fulfil(purchase_id, "sandbox")
        db.session.rollback()
        wallet_id = db.session.scalar(select(Wallet.id).where(Wallet.user_id == student.id))
        assert chain_problems(wallet_id) == []
        posting = db.session.scalars(select(Posting).where(Posting.wallet_id == wallet_id)).one()
        assert (posting.seq, posting.amount, posting.available_after) == (1, 40, 40)
        assert run_audit() == []


def test_credits_racing_refunds_disputes_and_spending_of_the_same_student_lose_no_token(
    app, wide_app
):
    """Purchases of one student credited at once (the one statement: the wallet, then the
    issuance and promotions shards) while refunds and disputes of the student's earlier
    purchases (a transaction of several entries: the purchase, the wallet, the shards,
    the wallet again) and transfers run: no deadlock, no error, every token accounted
    for, every chain whole, the audit clean."""
    with app.app_context():
        student = make_user("student")
        friend = make_user("student").id
        earlier = []
        for _ in range(3):
            purchase_id = started(student, 250)
            service.fulfil(purchase_id, "sandbox")
            earlier.append(purchase_id)
        fresh = [
            started(student, 250) if n % 2 else started(student, 40 + n, False) for n in range(8)
        ]
        db.session.commit()
        user_id = student.id
        before = balances(user_id)[0]
        price = db.session.get(Purchase, earlier[0]).amount_minor

    def credit(purchase_id):
        return lambda: service.fulfil(purchase_id, "stripe:evt").status

    def refund(purchase_id, n):
        return lambda: reversals.report(purchase_id, f"re_{purchase_id}_{n}", "succeeded",
                                        price // 3, "stripe:evt_r").status  # fmt: skip

    def dispute(purchase_id):
        return lambda: reversals.report(purchase_id, f"dp_{purchase_id}", "open", price,
                                        "stripe:evt_d").status  # fmt: skip

    def spend(n):
        return lambda: ledger.transfer(user_id, friend, 7, key=f"review-spend-{n}").id

    work = [credit(p) for p in fresh]
    work += [refund(earlier[0], n) for n in range(2)] + [refund(earlier[1], 0), dispute(earlier[2])]
    work += [spend(n) for n in range(4)]
    work += [credit(p) for p in fresh[:4]]  # replays, raced too
    outcomes = race(wide_app, work)
    assert errors(outcomes) == []

    with app.app_context():
        db.session.expire_all()
        credited = sum(
            p.tokens + p.bonus_tokens
            for p in db.session.scalars(select(Purchase).where(Purchase.id.in_(fresh)))
        )
        assert {db.session.get(Purchase, p).status for p in fresh} == {"paid"}
        found = [r for p in earlier for r in reversals.reversals_of(p)]
        taken = sum(r.taken for r in found)
        spent = balances(friend)[0]
        assert balances(user_id) == (before + credited - taken - spent, 0)
        wallet_id = db.session.scalar(select(Wallet.id).where(Wallet.user_id == user_id))
        assert chain_problems(wallet_id) == []
        for purchase_id in fresh:
            for touched in wallets_of_purchase(purchase_id):
                assert chain_problems(touched) == [], touched
        assert run_audit() == []


def everything() -> dict:
    """Every row a credit could write or move: counts of the tables it inserts into, every
    wallet's state, every purchase's row."""
    db.session.expire_all()
    counts = {
        table: db.session.scalar(text(f"SELECT count(*) FROM {table}"))  # noqa: S608 (our names)
        for table in ("journal_entries", "postings", "purchase_events", "notifications", "outbox")
    }
    wallets = db.session.execute(
        select(
            Wallet.id,
            Wallet.available,
            Wallet.locked,
            Wallet.head_seq,
            Wallet.head_hash,
            Wallet.prior_hash,
        ).order_by(Wallet.id)
    ).all()
    purchases = db.session.execute(select(Purchase.__table__).order_by(Purchase.id)).all()
    db.session.rollback()
    return {"counts": counts, "wallets": wallets, "purchases": purchases}


def last_entry_id() -> int:
    value = db.session.scalar(text("SELECT last_value FROM journal_entries_id_seq"))
    db.session.rollback()
    return value


@pytest.mark.parametrize("used", ["tokens", "bonus"])
def test_a_refused_credit_writes_nothing_anywhere_and_only_spends_sequence_numbers(app, used):
    """A used key refuses the whole statement: no entry, posting, history, notification or
    email, no wallet or head moved, the purchase's row (version, credited_entry_id) as it
    was. Only the entries' sequence moves on (the compare-and-set's nextval): a gap."""
    with app.app_context():
        student = make_user("student")
        purchase_id = started(student, 250)
        ledger.credit(student.id, 5, key=f"purchase:{purchase_id}:{used}")
        db.session.commit()
        before, sequence = everything(), last_entry_id()

        with pytest.raises(IdempotencyConflict):
            service.fulfil(purchase_id, "stripe:evt", receipt="R-refused")
        db.session.rollback()
        assert everything() == before
        assert last_entry_id() > sequence  # nextval is not rolled back: a harmless gap
        assert run_audit() == []


@pytest.mark.parametrize("account", ["issuance", "promotions"])
def test_a_credit_whose_shard_is_missing_is_refused_naming_it_and_writes_nothing(app, account):
    """The statement refuses a source's shard that does not exist (refusal steps 1 and 2):
    the error names that account's shard, and nothing is written, the guard's rows (which
    run first) included."""
    from sqlalchemy import delete

    from soma.ledger.errors import InvalidPosting
    from soma.ledger.shards import shard_count, shard_for, shard_key

    with app.app_context():
        student = make_user("student")
        purchase_id = started(student, 250)
        shard = shard_for(shard_key("", ("purchase", purchase_id)), shard_count())
        db.session.execute(delete(Wallet).where(Wallet.code == account, Wallet.shard == shard))
        db.session.commit()
        before, sequence = everything(), last_entry_id()

        with pytest.raises(InvalidPosting, match=f"no wallet for a shard of {account} by "):
            service.fulfil(purchase_id, "stripe:evt", receipt="R-no-shard")
        db.session.rollback()
        assert everything() == before
        assert last_entry_id() > sequence  # (the compare-and-set's nextval: a harmless gap)
        assert db.session.get(Purchase, purchase_id).status == "pending"


def test_huge_ids_are_written_and_chained_as_python_writes_them(app):
    """Purchase, entry and posting ids past 2**62: the words, digests and hashes the SQL
    writes are Python's (a replay through the ledger is a replay; the chains hold)."""
    with app.app_context():
        for sequence in ("purchases_id_seq", "journal_entries_id_seq", "postings_id_seq"):
            db.session.execute(text(f"SELECT setval('{sequence}', {2**62 + 12345})"))
        db.session.commit()
        student = make_user("student")
        purchase_id = started(student, 250)
        assert purchase_id > 2**62
        paid = service.fulfil(purchase_id, "stripe:evt", receipt="R-huge")
        assert paid.status == "paid" and paid.credited_entry_id > 2**62
        from tests.buying import replay_credits

        bonus = db.session.get(Purchase, purchase_id).bonus_tokens
        replay_credits(purchase_id, student.id, 250, bonus)
        note = db.session.scalar(
            select(text("message"))
            .select_from(text("notifications"))
            .where(text(f"link = '/buy/purchases/{purchase_id}'"))
        )
        assert note == service._credited_note(purchase_id, 250 + bonus)[0]
        for wallet_id in wallets_of_purchase(purchase_id):
            assert chain_problems(wallet_id) == []
        assert run_audit() == []


def test_a_credit_values_both_entries_at_the_rates_in_force_half_up_and_names_them_in_order(
    app, monkeypatch
):
    """The statement reads each rate once for both entries: each entry's USD values are its
    tokens at the rates in force, rounded half up as Python rounds them (rates of half a
    cent and a cent and a half a token, odd amounts: every value has a half cent). The
    credit names the entries it wrote, the tokens' first, the bonus's id above it."""
    from sqlalchemy import update

    from soma.ledger import core
    from soma.ledger.pricing import tokens_value_cents
    from soma.models import utcnow

    named = []
    post = core.post_row_credits

    def spying(*args, **kwargs):
        done = post(*args, **kwargs)
        named.append(done.entries)
        return done

    monkeypatch.setattr(core, "post_row_credits", spying)
    with app.app_context():
        student = make_user("student")
        purchase_id = started(student, 250)
        db.session.execute(
            update(Purchase).where(Purchase.id == purchase_id).values(tokens=1235, bonus_tokens=7)
        )
        db.session.commit()
        at = utcnow()
        ledger.publish_pricing("student", 4, 2, 60, at, backdate=True)
        ledger.publish_pricing("teacher", 4, 6, 60, at, backdate=True)
        db.session.commit()

        paid = service.fulfil(purchase_id, "stripe:evt", receipt="R-rates")
        entries = db.session.execute(
            select(JournalEntry.id, JournalEntry.tokens, JournalEntry.usd_cents,
                   JournalEntry.teacher_usd_cents, JournalEntry.created_at)
            .where(JournalEntry.reference_type == "purchase",
                   JournalEntry.reference_id == purchase_id)
            .order_by(JournalEntry.id)
        ).all()  # fmt: skip
        assert [(e.tokens, e.usd_cents, e.teacher_usd_cents) for e in entries] == [
            (1235, 618, 1853),  # 617.5 and 1852.5, half up
            (7, 4, 11),  # 3.5 and 10.5
        ]
        for entry in entries:
            assert entry.usd_cents == tokens_value_cents(entry.tokens, "student", entry.created_at)
            assert entry.teacher_usd_cents == tokens_value_cents(
                entry.tokens, "teacher", entry.created_at
            )
        assert named == [[entries[0].id, entries[1].id]]
        assert paid.credited_entry_id == entries[0].id < entries[1].id
        assert balances(student.id) == (1242, 0)
        assert run_audit() == []


def test_fulfilling_a_purchase_that_does_not_exist_writes_nothing(app):
    from sqlalchemy.exc import NoResultFound

    with app.app_context():
        student = make_user("student")
        started(student, 250)
        db.session.commit()
        before, sequence = everything(), last_entry_id()
        for missing in (10**9, 2**63 - 1):
            with pytest.raises(NoResultFound):
                service.fulfil(missing, "stripe:evt")
            db.session.rollback()
        assert everything() == before
        assert last_entry_id() == sequence


LARGE = ("purchases", "users", "wallets", "journal_entries", "postings", "purchase_events",
         "notifications", "outbox")  # fmt: skip


def _copies(connection, table: str, template_id: int, n: int, values: dict) -> None:
    """`n` copies of row `template_id` of `table`, some columns given (SQL over g, 1..n)."""
    columns = (
        connection.execute(
            text(
                "SELECT column_name FROM information_schema.columns WHERE table_name = :t "
                "AND column_name <> 'id' ORDER BY ordinal_position"
            ),
            {"t": table},
        )
        .scalars()
        .all()
    )
    chosen = ", ".join(values.get(column, column) for column in columns)
    insert = f"INSERT INTO {table} ({', '.join(columns)}) SELECT {chosen} "
    connection.execute(
        text(insert + f"FROM {table}, generate_series(1, {n}) g WHERE id = :id"),
        {"id": template_id},
    )


def test_the_credits_generic_plan_reads_no_large_table_whole(app):
    """The statement as psycopg prepares it once it has run five times, planned generic
    (plan_cache_mode forced), over tables of realistic size: 20,000 students with wallets
    and 60,000 paid purchases. No scan of a table that grows: every row it reads or
    moves is found through an index (the purchase by id, its student, the wallet by
    user, the shards by code and shard)."""
    from soma.fastread import _positional
    from soma.ledger import core
    from soma.models import PlatformAccount

    with app.app_context():
        student = make_user("student")
        template = started(student, 250)
        service.fulfil(template, "sandbox")
        connection = db.session.connection()
        _copies(connection, "users", student.id, 20_000, {"email": "'rv' || g || '@x.example'"})
        connection.execute(
            text(
                "INSERT INTO wallets (user_id, available, locked, is_source, created_at, "
                "head_seq, head_hash, prior_hash, shard) SELECT id, 0, 0, false, now(), 0, "
                "'', '', 0 FROM users WHERE NOT EXISTS (SELECT FROM wallets w "
                "WHERE w.user_id = users.id)"
            )
        )
        first_user = connection.execute(text("SELECT min(id) FROM users")).scalar()
        unique = {
            name: "NULL"
            for name in ("credited_entry_id", "checkout_session_id", "payment_intent_id",
                         "receipt", "checkout_request_id", "merchant_request_id")
        }  # fmt: skip
        _copies(connection, "purchases", template, 60_000,
                {**unique, "idempotency_key": "'rv' || g",
                 "user_id": f"{first_user} + g % 20000"})  # fmt: skip
        db.session.commit()
        db.session.execute(text("ANALYZE"))
        db.session.commit()
        pending = started(make_user("student"), 250)
        db.session.commit()

        base = app.config["APP_BASE_URL"]
        credits = ((EntryKind.PURCHASE, PlatformAccount.ISSUANCE),
                   (EntryKind.BONUS, PlatformAccount.PROMOTIONS))  # fmt: skip
        sql = core._row_credits_sql(service._paid_if_payable, ((), base), "purchase", credits)
        raw, names = _positional(sql)
        guard = core.Guard(
            service._paid_if_payable,
            ((), base),
            {"p_g_purchase": pending, "p_g_now": "2026-12-01T00:00:00Z", "p_g_source": "sandbox"},
        )
        row_credits = tuple(
            core.RowCredit(kind, f"purchase:{pending}:{part}", source)
            for (kind, source), part in zip(credits, ("tokens", "bonus"), strict=True)
        )
        when = datetime(2026, 12, 1, tzinfo=UTC)
        values = core._row_credits_values(guard, row_credits, ("purchase", pending), when)
        pooled = db.engine.raw_connection()
        try:
            cursor = pooled.driver_connection.cursor()
            cursor.execute("SET plan_cache_mode = force_generic_plan")
            cursor.execute("PREPARE rv_credit AS " + raw)

            def argument(value):
                if value is None:
                    return "NULL"
                return f"'{value}'" if isinstance(value, str | datetime) else str(value)

            arguments = ", ".join(argument(values[name]) for name in names)
            cursor.execute(f"EXPLAIN EXECUTE rv_credit({arguments})")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            cursor.execute("DEALLOCATE rv_credit")
            cursor.execute("RESET plan_cache_mode")
        finally:
            pooled.driver_connection.rollback()
            pooled.close()
        scans = [line.strip() for line in plan.splitlines() if "Seq Scan" in line
                 or "Bitmap Heap Scan" in line]  # fmt: skip
        assert [s for s in scans if any(f" on {table} " in s for table in LARGE)] == [], plan
        assert "Index Scan using pk_purchases" in plan
        assert "uq_wallets_user_id" in plan


def test_an_incremental_audit_after_credits_is_clean_and_sees_an_edited_credit_posting(app):
    """After a checkpoint, credits (with and without bonus, to a wallet with history) are
    in the incremental run's scope: it is clean, and an edit of one of the statement's
    postings (the user's first of two, chained inside the wallet's one UPDATE) is seen."""
    from soma.audit import audit

    with app.app_context():
        student = make_user("student")
        service.fulfil(started(student, 250), "sandbox")
        assert audit(full=True).violations == []  # the checkpoint
        purchases = [started(student, 250), started(student, 40, False), started(student, 100)]
        for purchase_id in purchases:
            service.fulfil(purchase_id, "stripe:evt")
        db.session.rollback()
        result = audit(write_checkpoint=False)
        assert (result.full, result.violations) == (False, [])

        first_of_two = db.session.scalar(
            select(Posting.id)
            .join(JournalEntry, JournalEntry.id == Posting.entry_id)
            .join(Wallet, Wallet.id == Posting.wallet_id)
            .where(
                JournalEntry.idempotency_key == f"purchase:{purchases[2]}:tokens",
                Wallet.user_id == student.id,
            )
        )
        db.session.execute(text("ALTER TABLE postings DISABLE TRIGGER postings_append_only"))
        db.session.execute(
            text("UPDATE postings SET available_after = available_after + 1 WHERE id = :id"),
            {"id": first_of_two},
        )
        db.session.execute(text("ALTER TABLE postings ENABLE TRIGGER postings_append_only"))
        db.session.commit()
        found = run_audit()
        assert any(v.check == "posting-chain" and f"posting {first_of_two}" in v.detail
                   for v in found), found  # fmt: skip


def _bonus_only_give(purchase: Purchase) -> tuple[int, int]:
    """Amounts (a, b) such that a refund "re_b" of a, then one "re_a" of b (sorted first,
    so the first's share moves along the price) makes the first give back bonus only."""
    from types import SimpleNamespace

    for a in range(1, purchase.amount_minor):
        for b in range(1, purchase.amount_minor - a):
            first = SimpleNamespace(id=1, provider_ref="re_b", amount_minor=a, active=True)
            alone = reversals.due(purchase, [first])[1]
            second = SimpleNamespace(id=2, provider_ref="re_a", amount_minor=b, active=True)
            both = reversals.due(purchase, [first, second])
            if alone[0] == both[1][0] and alone[1] > both[1][1] and all(both[2]):
                return a, b
    raise AssertionError("no such amounts")


def test_a_credit_racing_a_rebalance_that_gives_bonus_back_before_taking_does_not_deadlock(
    app, wide_app, monkeypatch
):
    """One shard per platform account (SOMA_PLATFORM_SHARDS=1, a setting the app allows):
    student U's refund "re_a" makes U's earlier refund "re_b" give back a bonus token
    (promotions) before "re_a" takes its tokens (issuance), in one transaction; student
    V's purchase is credited meanwhile (issuance, then promotions). The test only holds
    the refund for a moment after its first entry so the credit starts in between."""
    import threading
    import time

    from soma.ledger import shards

    for each in (app, wide_app):
        each.config["SOMA_PLATFORM_SHARDS"] = 1
        with each.app_context():
            shards.forget_shard_count()
    with app.app_context():
        u, v = make_user("student"), make_user("student")
        earlier = started(u, 250)
        service.fulfil(earlier, "sandbox")
        a, b = _bonus_only_give(db.session.get(Purchase, earlier))
        reversals.report(earlier, "re_b", "succeeded", a, "stripe:evt_1")
        pending = started(v, 250)
        db.session.commit()

    given = threading.Event()
    real_post = reversals._post

    def held_post(purchase, reversal, takes, gives):
        real_post(purchase, reversal, takes, gives)
        if any(gives) and not given.is_set():
            given.set()
            time.sleep(1.5)  # the credit now holds issuance and waits for promotions

    monkeypatch.setattr(reversals, "_post", held_post)

    def refund():
        return reversals.report(earlier, "re_a", "succeeded", b, "stripe:evt_2").status

    def credit():
        assert given.wait(10)
        time.sleep(0.2)
        return service.fulfil(pending, "stripe:evt_3").status

    outcomes = race(wide_app, [refund, credit])
    # (PostgreSQL aborts whichever's deadlock check finds the cycle: here the refund, which
    # waited last; without the pause, either. No token is lost or made: each is whole, but
    # the credit or the refund report fails and waits for its provider's retry.)
    assert errors(outcomes) == []
