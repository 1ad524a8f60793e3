"""The history reads as a statement: what each entry was, in words; a hold is a move to
locked, not a spend; a class states its charge; USD is the value of the wallet's own
movement, signed, and empty for moves and bonus tokens; each row links to its object. The
CSV carries the same meanings."""

import csv
import io
import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import event, select

from soma import ledger
from soma.extensions import db
from soma.gifts import service as gifts
from soma.models import (
    EntryKind,
    JournalEntry,
    PlatformAccount,
    ReversalStatus,
    User,
    Withdrawal,
)
from soma.payouts import withdrawals as withdrawal_service
from soma.purchases import reversals
from soma.wallet.history import history_page
from tests.builders import fund, make_teacher, make_user, make_withdrawal, paid_purchase
from tests.helpers import balances, text_of

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def rows_of(html: str) -> dict[int, str]:
    """Each history row's text, by entry id."""
    return {
        int(entry): text_of(row)
        for entry, row in re.findall(r'<tr data-entry="(\d+)".*?>(.*?)</tr>', html, re.S)
    }


def row_html(html: str, entry_id: int) -> str:
    return re.search(rf'<tr data-entry="{entry_id}".*?</tr>', html, re.S).group(0)


def csv_rows(client, query: str = "") -> dict[str, dict]:
    response = client.get("/wallet/history.csv" + query)
    assert response.mimetype == "text/csv"
    return {
        row["entry_id"]: row for row in csv.DictReader(io.StringIO(response.get_data(as_text=True)))
    }


def class_entries(student_id: int, teacher_id: int, class_id: int = 7):
    """A class of 5 tokens held, then settled paying 1 and releasing 4, as the class
    service writes them (soma.classes.service._move_tokens): one reference, the title as
    the memo."""
    details = {"reference": ("class", class_id), "memo": "Algebra"}
    with ledger.atomic():
        hold = ledger.hold(student_id, 5, key="class:7:hold", now=T0, **details)
        settle = ledger.settle(
            hold.id, 1, key="class:7:close", to_user_id=teacher_id,
            now=T0 + timedelta(hours=1), **details,
        )  # fmt: skip
    return hold, settle


def test_a_class_reads_as_a_hold_moved_to_locked_then_its_charge(app, client, auth):
    student = auth.login_as("student")
    with app.app_context():
        teacher = make_user("teacher")
        fund(student.id, 20, now=T0 - timedelta(hours=1), memo="Bought 20 tokens")
        hold, settle = class_entries(student.id, teacher.id)
        assert balances(student.id) == (19, 0)

    html = client.get("/wallet/history").get_data(as_text=True)
    rows = rows_of(html)
    assert rows[hold.id] == (
        "01 Mar 2026, 09:00 UTC Class hold Held for class: Algebra — 5 tokens moved to locked "
        "5 tokens → locked available -5 · locked +5 15 tokens 5 tokens locked"
    )
    assert rows[settle.id] == (
        "01 Mar 2026, 10:00 UTC Class payment Class: Algebra — 1 token paid, 4 released "
        "-1 token paid available +4 · locked -5 -$0.10 19 tokens"
    )
    # The hold is a move, never a debit, and has no dollar value; the charge is the debit.
    assert 'class="row-move"' in row_html(html, hold.id)
    assert "debit" not in row_html(html, hold.id)
    assert 'class="row-debit"' in row_html(html, settle.id)
    for entry in (hold, settle):
        assert 'href="/classes/7"' in row_html(html, entry.id)

    rows = csv_rows(client)
    assert rows[str(hold.id)] == {
        "date": "2026-03-01T09:00:00+00:00",
        "entry_id": str(hold.id),
        "type": "Class hold",
        "description": "Held for class: Algebra — 5 tokens moved to locked",
        "change": "0",
        "available_change": "-5",
        "locked_change": "5",
        "usd_value": "",
        "available_after": "15",
        "locked_after": "5",
        "reference": "class:7",
    }
    assert rows[str(settle.id)] == {
        "date": "2026-03-01T10:00:00+00:00",
        "entry_id": str(settle.id),
        "type": "Class payment",
        "description": "Class: Algebra — 1 token paid, 4 released",
        "change": "-1",
        "available_change": "4",
        "locked_change": "-5",
        "usd_value": "-0.10",
        "available_after": "19",
        "locked_after": "0",
        "reference": "class:7",
    }


def test_the_teacher_reads_the_class_as_earned_at_the_teacher_rate(app, client, auth):
    teacher = auth.login_as("teacher")
    with app.app_context():
        student = make_user("student")
        fund(student.id, 20)
        _, settle = class_entries(student.id, teacher.id)

    rows = rows_of(client.get("/wallet/history").get_data(as_text=True))
    assert list(rows) == [settle.id]  # the student's hold is not the teacher's
    assert rows[settle.id] == (
        "01 Mar 2026, 10:00 UTC Class payment Class: Algebra — 1 token earned +1 token "
        "+$0.04 1 token"
    )
    assert csv_rows(client)[str(settle.id)]["usd_value"] == "0.04"


def test_a_released_class_hold_is_a_move_back_with_no_charge(app, client, auth):
    student = auth.login_as("student")
    with app.app_context():
        fund(student.id, 10)
        with ledger.atomic():
            hold = ledger.hold(student.id, 5, key="h", reference=("class", 9), memo="Chemistry")
            release = ledger.release(hold.id, key="r", reference=("class", 9), memo="Chemistry")
    html = client.get("/wallet/history").get_data(as_text=True)
    assert (
        "Class: Chemistry — no charge, 5 tokens released to available 5 tokens → available"
        in (rows_of(html)[release.id])
    )
    assert 'class="row-move"' in row_html(html, release.id)
    assert csv_rows(client)[str(release.id)]["usd_value"] == ""


def test_a_purchase_is_a_credit_and_its_bonus_has_no_dollar_value(app, client, auth):
    student = auth.login_as("student")
    with app.app_context():
        buyer = db.session.get(User, student.id)
        purchase = paid_purchase(buyer, package_tokens=250)
        purchase_id = purchase.id
        bought, bonus = (row.entry_id for row in reversed(history_page(buyer.wallet.id).rows))
        welcome = fund(
            student.id, 3, kind=EntryKind.BONUS, source=PlatformAccount.PROMOTIONS,
            memo="Welcome bonus",
        ).id  # fmt: skip

    html = client.get("/wallet/history").get_data(as_text=True)
    rows = rows_of(html)
    assert (
        "Bought 250 tokens for $25.00 (Test payment (sandbox)) +250 tokens +$25.00"
        in (rows[bought])
    )
    assert rows[bonus].endswith(f"Bonus with purchase #{purchase_id} +10 tokens 260 tokens")
    assert "$" not in rows[bonus] and "$" not in rows[welcome]
    for entry in (bought, bonus):
        assert f'href="/buy/purchases/{purchase_id}"' in row_html(html, entry)
    assert 'href="' not in row_html(html, welcome)  # no object to link to

    rows = csv_rows(client)
    assert (rows[str(bought)]["usd_value"], rows[str(bought)]["change"]) == ("25.00", "250")
    assert rows[str(bought)]["reference"] == f"purchase:{purchase_id}"
    assert rows[str(bonus)]["usd_value"] == rows[str(welcome)]["usd_value"] == ""


def test_a_refund_is_a_debit_linked_to_its_purchase_and_its_bonus_part_has_no_value(
    app, client, auth
):
    student = auth.login_as("student")
    with app.app_context():
        purchase = paid_purchase(db.session.get(User, student.id), package_tokens=250)
        reversals.report(purchase.id, "re_1", ReversalStatus.SUCCEEDED, 2500, "test")
        taken = [row for row in history_page(purchase.user.wallet.id).rows if row.kind == "refund"]
        assert sorted(row.change for row in taken) == [-250, -10]

    html = client.get("/wallet/history").get_data(as_text=True)
    usd = {row["change"]: row["usd_value"] for row in csv_rows(client, "?kind=refund").values()}
    assert usd == {"-250": "-25.00", "-10": ""}  # the bonus part came from promotions
    references = {row["reference"] for row in csv_rows(client, "?kind=refund").values()}
    assert {reference.split()[0] for reference in references} == {f"purchase:{purchase.id}"}
    assert all(reference.split()[1].startswith("reversal:") for reference in references)
    for row in taken:
        assert f'href="/buy/purchases/{purchase.id}"' in row_html(html, row.entry_id)
        assert 'class="row-debit"' in row_html(html, row.entry_id)


def test_a_gift_is_negative_to_its_sender_and_positive_to_its_recipient(app, client, auth):
    sender = auth.login_as("student", name="Sam Sender")
    with app.app_context():
        make_user("student", email="ada@example.com", name="Ada")
        fund(sender.id, 40)
        giver = db.session.get(User, sender.id)
        nonce = gifts.issue_nonce(sender.id, "ada@example.com", 15, "for the notes")
        gift, _ = gifts.give_gift(giver, "ada@example.com", 15, "for the notes", nonce)
        entry_id = db.session.scalar(
            select(JournalEntry.id).where(
                JournalEntry.reference_type == "gift", JournalEntry.reference_id == gift.id
            )
        )

    html = client.get("/wallet/history").get_data(as_text=True)
    assert rows_of(html)[entry_id] == (
        f"{gift.created_at:%d %b %Y, %H:%M} UTC Gift Gift to Ada: “for the notes” -15 tokens "
        "-$1.50 25 tokens"
    )
    assert 'href="/wallet/history?kind=gift"' in row_html(html, entry_id)
    row = csv_rows(client)[str(entry_id)]
    assert (row["change"], row["usd_value"], row["reference"]) == (
        "-15",
        "-1.50",
        f"gift:{gift.id}",
    )

    auth.logout()
    auth.login("ada@example.com")
    html = client.get("/wallet/history").get_data(as_text=True)
    assert (
        "Gift from Sam Sender: “for the notes” +15 tokens +$1.50 15 tokens"
        in (rows_of(html)[entry_id])
    )


def test_a_withdrawal_hold_is_a_move_to_locked_and_its_payment_a_debit(app, client, auth, clock):
    teacher = auth.login_as("teacher")
    with app.app_context():
        fund(teacher.id, 600)
        withdrawal = make_withdrawal(db.session.get(User, teacher.id), 1000)
        clock.advance(seconds=5)
        assert withdrawal_service.sweep() == 1
        assert db.session.get(Withdrawal, withdrawal.id).status == "paid"
        assert balances(teacher.id) == (350, 0)

    html = client.get("/wallet/history").get_data(as_text=True)
    rows = rows_of(html)
    paid, hold = list(rows)[:2]
    assert rows[hold].endswith(
        f"Withdrawal requested Withdrawal #{withdrawal.id} requested — 250 tokens moved to locked "
        "250 tokens → locked available -250 · locked +250 350 tokens 250 tokens locked"
    )
    assert rows[paid].endswith(
        f"Withdrawal paid Withdrawal #{withdrawal.id} paid — 250 tokens paid out -250 tokens "
        "locked -250 -$10.00 350 tokens"
    )
    assert 'class="row-move"' in row_html(html, hold)
    assert 'class="row-debit"' in row_html(html, paid)
    for entry in (hold, paid):
        assert f'href="/withdrawals/{withdrawal.id}"' in row_html(html, entry)
    rows = csv_rows(client)
    assert (rows[str(hold)]["change"], rows[str(hold)]["usd_value"]) == ("0", "")
    assert (rows[str(paid)]["change"], rows[str(paid)]["usd_value"]) == ("-250", "-10.00")


def test_a_history_page_is_one_query_however_many_kinds_of_rows_it_shows(app):
    with app.app_context():
        student, teacher = make_user("student"), make_teacher(600)
        bea = make_user("student", email="bea@example.com")
        fund(student.id, 200)
        for number in range(6):
            class_entries_n(student.id, teacher.id, number)
        nonce = gifts.issue_nonce(student.id, "bea@example.com", 5, "")
        gifts.give_gift(student, "bea@example.com", 5, "", nonce)
        paid_purchase(student, tokens=50)
        wallet_id = student.wallet.id
        db.session.expire_all()

        statements = []

        def count(conn, cursor, statement, *args):
            statements.append(statement)

        engine = db.engine
        event.listen(engine, "before_cursor_execute", count)
        try:
            page = history_page(wallet_id, limit=25)
        finally:
            event.remove(engine, "before_cursor_execute", count)
        kinds = {row.kind for row in page.rows}
        assert {"class_hold", "class_settle", "gift", "purchase"} <= kinds
        assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
        # The gift's other side is named from the same query.
        assert [row.description for row in page.rows if row.kind == "gift"] == [
            f"Gift to {bea.display_name}"
        ]


def class_entries_n(student_id: int, teacher_id: int, number: int) -> None:
    details = {"reference": ("class", 100 + number), "memo": f"Class {number}"}
    with ledger.atomic():
        hold = ledger.hold(student_id, 5, key=f"class:{number}:hold", **details)
        ledger.settle(hold.id, 2, key=f"class:{number}:close", to_user_id=teacher_id, **details)
