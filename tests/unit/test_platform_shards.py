"""Platform sub-accounts (soma.ledger.shards) on each database: where entries go, that a
retire is always undone from the shards it credited, what reports and the audit see, the
setting and the command that make shards, and migration 0024 on a ledger with history."""

import flask_migrate
import pytest
from sqlalchemy import inspect, select, text

from soma import ledger
from soma.admin import metrics
from soma.audit import run_audit
from soma.audit.ledger import platform_shards_complete
from soma.extensions import db
from soma.ledger.core import Leg, platform_account, post, user_account
from soma.ledger.shards import (
    DEFAULT_SHARDS,
    existing_shards,
    forget_shard_count,
    shard_count,
    shard_for,
)
from soma.models import Bucket, EntryKind, PlatformAccount, Posting, Wallet
from tests.builders import fund, make_user
from tests.helpers import text_of

AVAILABLE, LOCKED = Bucket.AVAILABLE, Bucket.LOCKED


def shards_of(code: PlatformAccount) -> dict[int, int]:
    """{shard: available} of every wallet of a platform account."""
    db.session.expire_all()
    rows = db.session.execute(
        select(Wallet.shard, Wallet.available).where(Wallet.code == code.value)
    ).all()
    return dict(rows)


def entry_shards(entry_id: int) -> dict[str, int]:
    """{code: shard} of the platform wallets an entry posted to."""
    rows = db.session.execute(
        select(Wallet.code, Wallet.shard)
        .join(Posting, Posting.wallet_id == Wallet.id)
        .where(Posting.entry_id == entry_id, Wallet.code.is_not(None))
    ).all()
    return dict(rows)


def user_available(user_id: int) -> int:
    db.session.expire_all()
    return db.session.scalar(select(Wallet.available).where(Wallet.user_id == user_id))


def test_every_platform_account_has_its_shards_and_entries_spread_over_them(ctx):
    assert shard_count() == DEFAULT_SHARDS == 128
    for account in PlatformAccount:
        assert sorted(shards_of(account)) == list(range(DEFAULT_SHARDS))
    sources = db.session.execute(
        select(Wallet.code, Wallet.is_source).where(Wallet.code.is_not(None)).distinct()
    ).all()
    assert sorted((code, bool(source)) for code, source in sources) == [
        ("fees", False),
        ("issuance", True),
        ("promotions", True),
        ("redemption", False),
    ]
    student = make_user("student").id
    db.session.commit()
    posted = []
    for n in range(40):
        with ledger.atomic():
            posted.append(ledger.credit(student, n + 1, key=f"buy:{n}", reference=("purchase", n)))
    used = {entry_shards(entry.id)["issuance"] for entry in posted}
    # Each entry is on the shard its reference hashes to; 40 references use most shards.
    assert [entry_shards(e.id)["issuance"] for e in posted] == [
        shard_for(f"purchase:{n}", DEFAULT_SHARDS) for n in range(40)
    ]
    assert len(used) >= 10
    issued = shards_of(PlatformAccount.ISSUANCE)
    assert sum(issued.values()) == -sum(range(1, 41))
    assert user_available(student) == sum(range(1, 41))
    # A replay lands where the first did and moves nothing more.
    with ledger.atomic():
        again = ledger.credit(student, 1, key="buy:0", reference=("purchase", 0))
    assert again.replayed and again.id == posted[0].id
    assert shards_of(PlatformAccount.ISSUANCE) == issued
    assert run_audit() == []


def test_an_entry_without_a_reference_is_placed_by_its_key(ctx):
    student = make_user("student").id
    db.session.commit()
    entry = fund(student, 5, key="no-reference")
    assert entry_shards(entry.id) == {"issuance": shard_for("no-reference", DEFAULT_SHARDS)}


def retire_one(user_id: int, n: int, tokens: int, fee: int):
    """Hold and retire `tokens` of a user as one payout `n` would (reference payout n)."""
    reference = ("payout-test", n)
    with ledger.atomic():
        held = ledger.hold(user_id, tokens, key=f"hold:{n}", kind=EntryKind.WITHDRAWAL_HOLD)
        return ledger.retire(held.id, fee, key=f"retire:{n}", reference=reference)


def test_retire_then_unretire_of_many_payouts_is_never_refused(ctx):
    """Each unretire takes back from the shards its retire credited: by the retire entry,
    or by the same reference; never from a shard that holds fewer tokens."""
    teacher = make_user("teacher").id
    db.session.commit()
    fund(teacher, 10_000, key="teacher-funds")
    retired = [retire_one(teacher, n, 50 + n, n % 7) for n in range(60)]
    total = sum(50 + n for n in range(60))
    fees = sum(n % 7 for n in range(60))
    assert sum(shards_of(PlatformAccount.REDEMPTION).values()) == total - fees
    assert sum(shards_of(PlatformAccount.FEES).values()) == fees
    assert len(set(shard for e in retired for shard in entry_shards(e.id).values())) >= 10
    # Undo them newest first (the order that would drain a shard early if a wrong one
    # were chosen): half named by the retire entry, half by the shared reference.
    for n in reversed(range(60)):
        with ledger.atomic():
            undone = ledger.unretire(
                teacher,
                50 + n,
                n % 7,
                key=f"unretire:{n}",
                reference=("payout-test", n),
                retired_entry_id=retired[n].id if n % 2 else None,
            )
        assert entry_shards(undone.id) == entry_shards(retired[n].id)
    assert all(v == 0 for v in shards_of(PlatformAccount.REDEMPTION).values())
    assert all(v == 0 for v in shards_of(PlatformAccount.FEES).values())
    assert user_available(teacher) == 10_000
    assert run_audit() == []


def test_unretire_by_the_retire_entry_survives_a_change_of_the_number_of_shards(ctx, app):
    teacher = make_user("teacher").id
    db.session.commit()
    fund(teacher, 1000, key="teacher-funds")
    retired = [retire_one(teacher, n, 100, 3) for n in range(5)]
    app.config["SOMA_PLATFORM_SHARDS"] = 3
    forget_shard_count()
    assert shard_count() == 3
    for n, entry in enumerate(retired):
        with ledger.atomic():
            undone = ledger.unretire(
                teacher, 100, 3, key=f"unretire:{n}", retired_entry_id=entry.id
            )
        assert entry_shards(undone.id) == entry_shards(entry.id)
    assert user_available(teacher) == 1000
    assert run_audit() == []


def test_a_debit_from_a_sink_must_name_its_shard(ctx):
    student = make_user("student").id
    db.session.commit()
    legs = [
        Leg(platform_account(PlatformAccount.REDEMPTION), AVAILABLE, -5),
        Leg(user_account(student), AVAILABLE, 5),
    ]
    with pytest.raises(ledger.InvalidPosting, match="names the shard"), ledger.atomic():
        post(EntryKind.ADJUSTMENT, "sink-debit", legs, tokens=5)
    with pytest.raises(ledger.InvalidPosting, match="shard"):
        platform_account(PlatformAccount.FEES, -1)
    # A shard that does not exist is refused by name, never a silent no-op.
    legs = [
        Leg(platform_account(PlatformAccount.ISSUANCE, 999), AVAILABLE, -5),
        Leg(user_account(student), AVAILABLE, 5),
    ]
    with pytest.raises(ledger.InvalidPosting, match="no wallet for issuance:999"), ledger.atomic():
        post(EntryKind.ADJUSTMENT, "no-such-shard", legs, tokens=5)
    assert user_available(student) == 0


def test_the_setting_never_picks_a_shard_that_does_not_exist_until_the_command_makes_it(
    ctx, app, runner
):
    student = make_user("student").id
    db.session.commit()
    app.config["SOMA_PLATFORM_SHARDS"] = 4
    forget_shard_count()
    posted = [fund(student, 1, key=f"four:{n}") for n in range(30)]
    assert {entry_shards(e.id)["issuance"] for e in posted} <= {0, 1, 2, 3}

    app.config["SOMA_PLATFORM_SHARDS"] = 136
    forget_shard_count()
    assert shard_count() == 128  # only 128 exist
    posted = [fund(student, 1, key=f"wide:{n}") for n in range(60)]
    assert max(entry_shards(e.id)["issuance"] for e in posted) < 128

    result = runner.invoke(args=["soma", "shards"])
    assert result.exit_code == 0, result.output
    assert "136 shard(s) each (32 created" in result.output
    assert existing_shards(db.session.connection()) == 136
    assert shard_count() == 136
    # Keys that hash to the new shards 128 to 135 go there now.
    keys = [k for k in (f"wider:{n}" for n in range(4000)) if shard_for(k, 136) >= 128][:20]
    posted = [fund(student, 1, key=key) for key in keys]
    assert {entry_shards(e.id)["issuance"] for e in posted} == {shard_for(k, 136) for k in keys}
    assert min(entry_shards(e.id)["issuance"] for e in posted) >= 128
    assert runner.invoke(args=["soma", "shards"]).output.startswith(
        "Platform accounts have 136 shard(s) each (0 created"
    )
    assert user_available(student) == 110
    assert sum(shards_of(PlatformAccount.ISSUANCE).values()) == -110
    assert run_audit() == []


def test_the_audit_names_a_missing_shard_and_a_shard_unlike_its_account(ctx):
    assert platform_shards_complete() == []
    db.session.execute(text("DELETE FROM wallets WHERE code = 'fees' AND shard = 7"))
    db.session.execute(
        text("UPDATE wallets SET is_source = true WHERE code = 'redemption' AND shard = 2")
        if db.engine.dialect.name == "postgresql"
        else text("UPDATE wallets SET is_source = 1 WHERE code = 'redemption' AND shard = 2")
    )
    db.session.commit()
    details = [v.detail for v in run_audit() if v.check == "platform-shards"]
    assert any("fees has shards [0, 1, 2, 3, 4, 5, 6, 8," in d for d in details), details
    assert any(
        "(redemption shard 2) says it is a source; redemption is not one" in d for d in details
    )
    assert any("different numbers of shards" in d for d in details), details
    # The app spreads over the shards every account has: fees' gap caps it at 7.
    forget_shard_count()
    assert shard_count() == 7


def test_reports_show_one_summed_balance_per_platform_account(ctx, client, auth):
    teacher = make_user("teacher").id
    make_user("admin", email="boss@example.com")
    db.session.commit()
    fund(teacher, 5000, key="teacher-funds")
    for n in range(20):
        with ledger.atomic():
            ledger.credit(
                teacher, 10, key=f"bonus:{n}", kind=EntryKind.BONUS,
                source=PlatformAccount.PROMOTIONS, reference=("purchase", n),
            )  # fmt: skip
    for n in range(12):
        retire_one(teacher, n, 100, 4)
    assert len([s for s, v in shards_of(PlatformAccount.REDEMPTION).items() if v]) > 1
    figures = metrics.figures()
    platform = [(h.name, h.wallets, h.available, h.locked) for h in figures.platform]
    assert sorted(platform) == sorted(
        [
            ("issuance", 1, -5000, 0),
            ("promotions", 1, -200, 0),
            ("redemption", 1, 12 * 96, 0),
            ("fees", 1, 12 * 4, 0),
        ]
    )
    auth.login("boss@example.com")
    html = client.get("/admin/").get_data(as_text=True)
    for code, label, amount in (
        ("issuance", "Issuance (tokens sold)", "-5,000"),
        ("promotions", "Promotions (bonus tokens)", "-200"),
        ("redemption", "Redemption (tokens paid out)", "1,152"),
        ("fees", "Fees (withdrawal fees)", "48"),
    ):
        assert html.count(f'data-holder="{code}"') == 1
        row = html.split(f'<tr data-holder="{code}">')[1].split("</tr>")[0]
        assert text_of(row) == f"{label} {amount} 0 {amount} \N{EM DASH}"


def test_bonus_tokens_on_any_shard_of_promotions_show_as_promotional(ctx, client, auth):
    from soma.wallet.history import history_page

    student = make_user("student", email="s@example.com").id
    db.session.commit()
    for n in range(6):
        with ledger.atomic():
            ledger.credit(
                student, 10, key=f"bonus:{n}", kind=EntryKind.BONUS,
                source=PlatformAccount.PROMOTIONS, reference=("purchase", n),
            )  # fmt: skip
    fund(student, 3, key="bought")
    own = db.session.scalar(select(Wallet.id).where(Wallet.user_id == student))
    rows = history_page(own, limit=10).rows
    assert [row.promotional for row in rows] == [False] + [True] * 6
    assert len({entry_shards(row.entry_id).get("promotions") for row in rows[1:]}) > 1


def test_migration_0024_keeps_the_history_on_shard_0_and_its_chains_whole(ctx, app):
    """Down to 0023 (one wallet per account) with a ledger's history, and up again: each
    account's row is shard 0 with its balance and chain; the others start empty. A shard
    with postings survives a downgrade as a wallet of its own and comes back."""
    student = make_user("student").id
    teacher = make_user("teacher").id
    db.session.commit()

    def on(shard: int, code: PlatformAccount, user: int, tokens: int, key: str) -> None:
        legs = [
            Leg(platform_account(code, shard), AVAILABLE, -tokens),
            Leg(user_account(user), AVAILABLE, tokens),
        ]
        with ledger.atomic():
            post(EntryKind.PURCHASE, key, legs, tokens=tokens)

    # What a ledger of one wallet per account holds: everything on shard 0.
    for n in range(5):
        on(0, PlatformAccount.ISSUANCE, student, 10 + n, f"old:{n}")
    on(0, PlatformAccount.ISSUANCE, teacher, 500, "old:teacher")
    held = None
    with ledger.atomic():
        held = ledger.hold(teacher, 100, key="old:hold", kind=EntryKind.WITHDRAWAL_HOLD)
    legs = [
        Leg(user_account(teacher), LOCKED, -100),
        Leg(platform_account(PlatformAccount.REDEMPTION, 0), AVAILABLE, 96),
        Leg(platform_account(PlatformAccount.FEES, 0), AVAILABLE, 4),
    ]
    with ledger.atomic():
        post(EntryKind.WITHDRAWAL_PAID, "old:retire", legs, tokens=100, closes_entry_id=held.id)
    on(5, PlatformAccount.ISSUANCE, student, 7, "on-shard-5")
    before = dict(
        db.session.execute(
            select(Wallet.id, Wallet.head_hash).where(Wallet.code.is_not(None), Wallet.head_seq > 0)
        ).all()
    )
    assert run_audit() == []
    db.session.remove()

    flask_migrate.downgrade(revision="0023")
    db.session.remove()
    assert "shard" not in {c["name"] for c in inspect(db.engine).get_columns("wallets")}
    codes = dict(
        db.session.execute(text("SELECT code, available FROM wallets WHERE code IS NOT NULL")).all()
    )
    assert codes == {
        "issuance": -560,
        "promotions": 0,
        "redemption": 96,
        "fees": 4,
        "issuance:5": -7,
    }
    db.session.remove()

    flask_migrate.upgrade()
    db.session.remove()
    forget_shard_count()
    assert shards_of(PlatformAccount.ISSUANCE) == {n: 0 for n in range(DEFAULT_SHARDS)} | {
        0: -560,
        5: -7,
    }
    assert shards_of(PlatformAccount.REDEMPTION) == {n: 0 for n in range(DEFAULT_SHARDS)} | {0: 96}
    assert shards_of(PlatformAccount.FEES) == {n: 0 for n in range(DEFAULT_SHARDS)} | {0: 4}
    after = dict(
        db.session.execute(
            select(Wallet.id, Wallet.head_hash).where(Wallet.code.is_not(None), Wallet.head_seq > 0)
        ).all()
    )
    assert after == before  # the same wallets, the same chain heads
    assert run_audit() == []
    fund(student, 3, key="after-upgrade")
    assert user_available(student) == sum(10 + n for n in range(5)) + 7 + 3
    assert run_audit() == []
