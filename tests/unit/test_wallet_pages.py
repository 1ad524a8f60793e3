"""The wallet page and the transaction history: what the user sees, from what is stored."""

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from soma import ledger
from soma.extensions import db
from soma.models import EntryKind, JournalEntry, PlatformAccount, Wallet
from soma.wallet.history import history_page
from tests.builders import fund, make_user
from tests.helpers import balances, text_of

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def entry_ids(html: str) -> list[int]:
    """The entry ids of the history rows on a page, top to bottom."""
    return [int(m) for m in re.findall(r'data-entry="(\d+)"', html)]


def test_wallet_shows_available_locked_total_and_value_at_student_rate(app, client, auth):
    student = auth.login_as("student")
    with app.app_context():
        fund(student.id, 120)
        with ledger.atomic():
            ledger.hold(student.id, 30, key="hold:1", memo="Algebra class")
        assert balances(student.id) == (90, 30)

    html = client.get("/wallet/").get_data(as_text=True)
    assert re.search(r'data-testid="available">90 tokens<', html)
    assert re.search(r'data-testid="locked">30 tokens<', html)
    assert re.search(r'data-testid="total">120 tokens<', html)
    assert "worth $12.00 at your rate (10 tokens = $1.00)" in text_of(html)
    assert "low-balance" not in html


def test_teacher_wallet_is_valued_at_the_teacher_rate(app, client, auth):
    teacher = auth.login_as("teacher")
    with app.app_context():
        fund(teacher.id, 25, kind=EntryKind.ADJUSTMENT)

    page = text_of(client.get("/wallet/").get_data(as_text=True))
    assert "worth $1.00 at your rate (10 tokens = $0.40)" in page
    assert "Give tokens" not in page
    assert "held for withdrawals" in page


@pytest.mark.parametrize(("available", "banner"), [(0, True), (9, True), (10, False)])
def test_low_balance_banner_shows_below_one_hour_of_class(app, client, auth, available, banner):
    student = auth.login_as("student")
    if available:
        with app.app_context():
            fund(student.id, available)
    for url in ("/wallet/", "/student"):
        html = client.get(url).get_data(as_text=True)
        assert ('data-testid="low-balance"' in html) is banner, url
    if banner:
        assert f"You have {available} token" in text_of(html)
        assert "a one-hour class costs 10 tokens" in text_of(html)


def test_teachers_never_see_the_low_balance_banner(client, auth):
    auth.login_as("teacher")
    assert "low-balance" not in client.get("/wallet/").get_data(as_text=True)


def test_wallet_lists_the_last_ten_transactions_newest_first(app, client, auth):
    student = auth.login_as("student")
    with app.app_context():
        ids = [
            fund(student.id, 1, now=T0 + timedelta(minutes=i), memo=f"top-up {i}").id
            for i in range(12)
        ]
    html = client.get("/wallet/").get_data(as_text=True)
    assert entry_ids(html) == list(reversed(ids))[:10]
    assert "top-up 11" in html and "top-up 1<" not in html
    assert "Older transactions" in html


def test_an_empty_wallet_says_so(client, auth):
    auth.login_as("student")
    html = client.get("/wallet/").get_data(as_text=True)
    assert 'data-testid="no-transactions"' in html
    assert re.search(r'data-testid="total">0 tokens<', html)


def test_admins_have_no_wallet_page(client, auth):
    auth.login_as("admin")
    assert client.get("/wallet/").status_code == 403
    assert client.get("/wallet/history").status_code == 403


def test_history_rows_show_date_kind_description_signed_tokens_value_and_balance(app, client, auth):
    student = auth.login_as("student")
    with app.app_context():
        teacher = make_user("teacher")
        fund(student.id, 50, now=T0, memo="Bought 50 tokens")
        with ledger.atomic():
            held = ledger.hold(student.id, 10, key="h", now=T0 + timedelta(hours=1), memo="Hold")
            ledger.settle(
                held.id, 8, to_user_id=teacher.id, key="s", now=T0 + timedelta(hours=2),
                memo="Class with a teacher",
            )  # fmt: skip
    html = client.get("/wallet/history").get_data(as_text=True)
    rows = re.findall(r"<tr data-entry.*?</tr>", html, re.S)
    assert len(rows) == 3
    settle, hold, purchase = (text_of(row) for row in rows)
    # A statement: the settle states its charge (8 paid, 2 released) and its value leaves
    # the wallet; the hold only moves tokens to locked, so it is neither a debit nor valued.
    assert settle == (
        "01 Mar 2026, 11:00 UTC Class payment Class: Class with a teacher — 8 tokens paid, "
        "2 released -8 tokens paid available +2 · locked -10 -$0.80 42 tokens"
    )
    assert hold == (
        "01 Mar 2026, 10:00 UTC Class hold Held for class: Hold — 10 tokens moved to locked "
        "10 tokens → locked available -10 · locked +10 40 tokens 10 tokens locked"
    )
    assert purchase == (
        "01 Mar 2026, 09:00 UTC Purchase Bought 50 tokens +50 tokens +$5.00 50 tokens"
    )


def test_history_shows_only_the_users_own_entries(app, client, auth):
    student = auth.login_as("student")
    with app.app_context():
        other = make_user("student")
        mine = fund(student.id, 5).id
        theirs = fund(other.id, 7).id
    ids = entry_ids(client.get("/wallet/history").get_data(as_text=True))
    assert mine in ids and theirs not in ids


def test_history_pages_by_keyset_without_overlap(app, client, auth):
    student = auth.login_as("student")
    with app.app_context():
        ids = [fund(student.id, 1, now=T0 + timedelta(minutes=i)).id for i in range(30)]
    newest_first = list(reversed(ids))

    first = client.get("/wallet/history").get_data(as_text=True)
    assert entry_ids(first) == newest_first[:25]
    older = re.search(r'href="([^"]+)"[^>]*data-testid="older"', first).group(1)
    assert "cursor=" in older and "offset" not in older

    second = client.get(older.replace("&amp;", "&")).get_data(as_text=True)
    assert entry_ids(second) == newest_first[25:]
    assert 'data-testid="older"' not in second
    assert "« Newest" in second


def test_entries_at_the_same_instant_are_not_skipped_between_pages(app, client, auth):
    student = auth.login_as("student")
    with app.app_context():
        ids = [fund(student.id, 1, now=T0).id for _ in range(27)]
    first = client.get("/wallet/history").get_data(as_text=True)
    older = re.search(r'href="([^"]+)"[^>]*data-testid="older"', first).group(1)
    second = client.get(older.replace("&amp;", "&")).get_data(as_text=True)
    assert sorted(entry_ids(first) + entry_ids(second)) == ids


def test_a_garbled_cursor_shows_the_first_page(app, client, auth):
    student = auth.login_as("student")
    with app.app_context():
        entry = fund(student.id, 3)
    response = client.get("/wallet/history?cursor=not-a-cursor")
    assert response.status_code == 200
    assert entry_ids(response.get_data(as_text=True)) == [entry.id]


def test_history_filters_by_kind_and_date_range(app, client, auth):
    student = auth.login_as("student")
    with app.app_context():
        march = fund(student.id, 40, now=T0).id
        april = fund(student.id, 40, now=T0 + timedelta(days=31)).id
        bonus = fund(
            student.id, 5, kind=EntryKind.BONUS, source=PlatformAccount.PROMOTIONS,
            now=T0 + timedelta(days=31, hours=1),
        ).id  # fmt: skip

    def ids(query):
        return entry_ids(client.get(f"/wallet/history?{query}").get_data(as_text=True))

    assert ids("") == [bonus, april, march]
    assert ids("kind=bonus") == [bonus]
    assert ids("kind=purchase") == [april, march]
    assert ids("start=2026-04-01") == [bonus, april]
    assert ids("end=2026-03-01") == [march]
    assert ids("start=2026-03-02&end=2026-03-31") == []
    assert ids("kind=purchase&start=2026-04-01&end=2026-04-01") == [april]


def test_the_filters_stay_in_the_pager_and_csv_links(app, client, auth):
    student = auth.login_as("student")
    with app.app_context():
        for i in range(26):
            fund(student.id, 1, kind=EntryKind.BONUS, source=PlatformAccount.PROMOTIONS,
                 now=T0 + timedelta(minutes=i))  # fmt: skip
    html = client.get("/wallet/history?kind=bonus&start=2026-03-01").get_data(as_text=True)
    older = re.search(r'href="([^"]+)"[^>]*data-testid="older"', html).group(1)
    assert "kind=bonus" in older and "start=2026-03-01" in older
    csv_link = re.search(r'href="([^"]+)"[^>]*data-testid="csv"', html).group(1)
    assert csv_link.startswith("/wallet/history.csv?") and "kind=bonus" in csv_link
    assert '<option selected value="bonus">' in html


def test_an_end_date_before_the_start_date_is_explained_and_the_kind_still_applies(
    app, client, auth
):
    student = auth.login_as("student")
    with app.app_context():
        purchase = fund(student.id, 3).id
        fund(student.id, 2, kind=EntryKind.BONUS, source=PlatformAccount.PROMOTIONS)
    html = client.get("/wallet/history?start=2026-05-02&end=2026-05-01").get_data(as_text=True)
    assert "The end date is before the start date." in html
    assert len(entry_ids(html)) == 2
    html = client.get("/wallet/history?kind=purchase&start=2026-05-02&end=2026-05-01").get_data(
        as_text=True
    )
    assert "The end date is before the start date. Showing every date." in text_of(html)
    assert entry_ids(html) == [purchase]
    csv_link = re.search(r'href="([^"]+)"[^>]*data-testid="csv"', html).group(1)
    assert csv_link == "/wallet/history.csv?kind=purchase"


def test_an_unknown_kind_is_ignored(app, client, auth):
    student = auth.login_as("student")
    with app.app_context():
        entry = fund(student.id, 3).id
    response = client.get("/wallet/history?kind=free-money")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert entry_ids(html) == [entry]
    assert "That type of transaction is unknown. Showing every type." in html
    assert "Showing every date" not in html


def test_htmx_gets_the_table_alone_and_a_history_restore_gets_the_page(app, client, auth):
    student = auth.login_as("student")
    with app.app_context():
        entry = fund(student.id, 3)
    fragment = client.get("/wallet/history?kind=purchase", headers={"HX-Request": "true"})
    body = fragment.get_data(as_text=True)
    assert "<html" not in body and '<nav aria-label="Main">' not in body
    assert entry_ids(body) == [entry.id]
    assert "HX-Request" in fragment.headers["Vary"]

    restore = client.get(
        "/wallet/history?kind=purchase",
        headers={"HX-Request": "true", "HX-History-Restore-Request": "true"},
    ).get_data(as_text=True)
    assert "<html" in restore and entry_ids(restore) == [entry.id]


def test_csv_export_has_every_filtered_entry_and_neutralises_formulas(app, client, auth):
    student = auth.login_as("student")
    with app.app_context():
        first = fund(student.id, 30, now=T0, memo='=HYPERLINK("http://evil")').id
        for i in range(600):  # more than one keyset batch
            fund(student.id, 1, kind=EntryKind.BONUS, source=PlatformAccount.PROMOTIONS,
                 now=T0 + timedelta(seconds=i + 1))  # fmt: skip
    response = client.get("/wallet/history.csv")
    assert response.mimetype == "text/csv"
    assert 'attachment; filename="soma-history-' in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) == 601
    assert rows[-1]["entry_id"] == str(first)
    assert rows[-1]["description"] == '\'=HYPERLINK("http://evil")'
    assert rows[-1] == {
        "date": "2026-03-01T09:00:00+00:00",
        "entry_id": str(first),
        "type": "Purchase",
        "description": '\'=HYPERLINK("http://evil")',
        "change": "30",
        "available_change": "30",
        "locked_change": "0",
        "usd_value": "3.00",
        "available_after": "30",
        "locked_after": "0",
        "reference": "",
    }
    # Promotional bonus tokens were never paid for: no dollar value.
    assert rows[0]["type"] == "Bonus" and rows[0]["usd_value"] == ""
    assert rows[0]["available_after"] == "630"

    bonuses = client.get("/wallet/history.csv?kind=purchase").get_data(as_text=True)
    assert len(list(csv.DictReader(io.StringIO(bonuses)))) == 1


@pytest.mark.parametrize(
    "url",
    [
        "/wallet/history?cursor=1.99999999999999999999",
        "/wallet/history?cursor=99999999999999999999999.5",
        "/wallet/history?end=9999-12-31",
        "/wallet/history.csv?end=9999-12-31",
        "/notifications/?before=99999999999999999999",
    ],
)
def test_out_of_range_arguments_show_the_page_not_an_error(app, client, auth, url):
    student = auth.login_as("student")
    with app.app_context():
        fund(student.id, 3)
    response = client.get(url)
    assert response.status_code == 200
    if "history?" in url:
        assert len(entry_ids(response.get_data(as_text=True))) == 1


def test_history_keyset_pages_cover_every_entry_once(app):
    with app.app_context():
        student_id = make_user("student").id
        ids = []
        for i in range(60):
            # Pairs share an instant, so the entry id must break the tie.
            ids.append(fund(student_id, 1, now=T0 + timedelta(minutes=i // 2)).id)
        wallet_id = db.session.scalar(select(Wallet.id).where(Wallet.user_id == student_id))

        seen, cursor = [], None
        while True:
            page = history_page(wallet_id, cursor=cursor, limit=7)
            seen += [row.entry_id for row in page.rows]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        created = dict(db.session.execute(select(JournalEntry.id, JournalEntry.created_at)).all())
        assert seen == sorted(ids, key=lambda i: (created[i], i), reverse=True)
        assert [row.available_after for row in history_page(wallet_id, limit=3).rows] == [
            60,
            59,
            58,
        ]
