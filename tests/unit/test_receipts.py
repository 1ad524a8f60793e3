"""Purchases as the student reads them: refunded and disputed amounts and the resulting
status, result boxes by state (colour and words), the buy page's live total, and a
printable receipt per paid purchase (the owner's alone)."""

import re

import pytest

from soma.extensions import db
from soma.models import ReversalStatus, User
from soma.purchases import reversals
from soma.purchases import service as purchase_service
from tests.builders import make_user, paid_purchase
from tests.helpers import text_of


@pytest.fixture
def student(app, auth):
    return auth.login_as("student", name="Pat Payer", email="pat@example.com")


def buy(app, student_id: int, tokens: int, report: tuple | None = None) -> int:
    """A paid sandbox purchase of `tokens` (10 ¢ each); `report` is a reversal to report
    on it: (status, amount in cents)."""
    with app.app_context():
        purchase = paid_purchase(db.session.get(User, student_id), tokens=tokens)
        if report:
            status, cents = report
            reversals.report(purchase.id, f"rev_{purchase.id}", status, cents, "test")
        return purchase.id


def history_row(client, purchase_id: int) -> str:
    html = client.get("/buy/purchases").get_data(as_text=True)
    return re.search(rf'<tr data-purchase="{purchase_id}">.*?</tr>', html, re.S).group(0)


@pytest.mark.parametrize(
    ("report", "reversed_text", "standing"),
    [
        (None, "—", "Paid"),
        ((ReversalStatus.SUCCEEDED, 500), "$5.00 refunded", "Partly refunded"),
        ((ReversalStatus.PENDING, 1200), "$12.00 refunded", "Refunded"),
        ((ReversalStatus.OPEN, 1200), "$12.00 disputed", "Disputed"),
        ((ReversalStatus.FAILED, 500), "—", "Paid"),  # a failed refund gave nothing back
    ],
)
def test_purchase_history_shows_reversed_amounts_and_the_resulting_status(
    app, client, student, report, reversed_text, standing
):
    purchase_id = buy(app, student.id, 120, report)
    row = history_row(client, purchase_id)
    assert text_of(row).startswith(f"Purchase #{purchase_id}")
    assert f"120 tokens $12.00 {reversed_text} Test payment (sandbox) {standing} Receipt" in (
        text_of(row)
    )
    key = standing.lower().replace(" ", "-")
    assert f'class="status-badge status-{key}" data-testid="standing">{standing}<' in row
    assert f'href="/buy/purchases/{purchase_id}/receipt"' in row


def test_the_purchase_page_states_a_partial_refund_with_its_amounts(app, client, student):
    purchase_id = buy(app, student.id, 120, (ReversalStatus.SUCCEEDED, 500))
    html = client.get(f"/buy/purchases/{purchase_id}").get_data(as_text=True)
    text = text_of(html)
    assert "↺ Partly refunded 120 tokens were credited when it was paid. See the receipt" in text
    assert "Refunded to you: $5.00 of $12.00. 50 tokens taken back from your wallet." in text
    assert 'data-result="reversed"' in html


def test_result_boxes_are_coloured_and_worded_by_state(app, client, student):
    paid = buy(app, student.id, 50)
    with app.app_context():
        user = db.session.get(User, student.id)
        quote = purchase_service.quote(custom_tokens=60)
        failed = purchase_service.start(user, quote, purchase_service.Provider.SANDBOX, "k1").id
        purchase_service.fail(failed, "sandbox", "The test payment was declined.")
        pending = purchase_service.start(user, quote, purchase_service.Provider.SANDBOX, "k2").id

    expected = {
        paid: ("result-paid", "✓ Paid", "50 tokens credited to your wallet."),
        failed: ("result-failed", "✕ Payment failed", "No tokens were added."),
        pending: ("result-processing", "… Processing", "This page updates by itself"),
    }
    for purchase_id, (css, word, words) in expected.items():
        for url in (f"/buy/purchases/{purchase_id}", f"/buy/purchases/{purchase_id}/status"):
            html = client.get(url).get_data(as_text=True)
            box = re.search(r'<section id="purchase-status".*?</section>', html, re.S).group(0)
            assert f'class="result {css} ' in box, url
            assert text_of(box).startswith(word), url  # words, not colour alone
            assert words in text_of(box), url
            assert ("receipt" in box) is (purchase_id == paid), url


def test_a_receipt_states_what_was_bought_paid_and_refunded(app, client, student):
    with app.app_context():
        purchase = paid_purchase(db.session.get(User, student.id), package_tokens=250)
        reversals.report(purchase.id, "re_part", ReversalStatus.SUCCEEDED, 1000, "test")
        purchase_id = purchase.id
        paid_at = purchase_service.paid_at(purchase_id)

    html = client.get(f"/buy/purchases/{purchase_id}/receipt").get_data(as_text=True)
    text = text_of(html)
    assert (
        f"Receipt number SOMA-{purchase_id:06d} Date paid {paid_at:%d %b %Y, %H:%M} UTC "
        "Student Pat Payer (pat@example.com) Bought 250 tokens + 10 tokens bonus (free) "
        "Amount paid $25.00 USD Paid with Test payment (sandbox) "
        f"Provider reference SANDBOX-{purchase_id} Status Partly refunded Refunded $10.00 "
        "Net paid $15.00"
    ) in text
    assert "Refunds and disputes Date What Amount" in text and "Refunded $10.00" in text
    assert "Use your browser's Print" in text and 'class="no-print"' in html
    # Linked from the purchase page and the history.
    for page in (f"/buy/purchases/{purchase_id}", "/buy/purchases"):
        assert f'href="/buy/purchases/{purchase_id}/receipt"' in client.get(page).get_data(
            as_text=True
        )


def test_a_receipt_is_the_owners_alone_and_only_of_a_paid_purchase(app, client, auth, student):
    mine = buy(app, student.id, 50)
    with app.app_context():
        other = make_user("student", email="olu@example.com")
        theirs = paid_purchase(other, tokens=70).id
        quote = purchase_service.quote(custom_tokens=60)
        unpaid = purchase_service.start(
            db.session.get(User, student.id), quote, purchase_service.Provider.SANDBOX, "k"
        ).id
    assert client.get(f"/buy/purchases/{mine}/receipt").status_code == 200
    assert client.get(f"/buy/purchases/{theirs}/receipt").status_code == 404
    assert client.get(f"/buy/purchases/{unpaid}/receipt").status_code == 404
    assert client.get("/buy/purchases/99999999/receipt").status_code == 404
    assert client.get("/buy/purchases/1x/receipt").status_code == 404

    auth.logout()
    auth.login_as("teacher")
    assert client.get(f"/buy/purchases/{mine}/receipt").status_code == 403
    auth.logout()
    auth.login_as("admin")
    assert "Pat Payer (pat@example.com)" in text_of(
        client.get(f"/buy/purchases/{mine}/receipt").get_data(as_text=True)
    )
    admin_page = client.get(f"/admin/purchases/{mine}").get_data(as_text=True)
    assert f'href="/buy/purchases/{mine}/receipt"' in admin_page


def test_the_buy_page_has_a_live_total_for_a_custom_amount(client, student):
    html = client.get("/buy/").get_data(as_text=True)
    box = re.search(r'<p class="custom-total".*?</p>', html, re.S).group(0)
    # Hidden until the script fills it: without JS the page has no total, and works.
    assert " hidden " in box
    assert 'data-rate-cents="100" data-rate-tokens="10"' in box
    assert 'data-min="10" data-max="10000"' in box
    assert '<output class="live-total" for="custom_tokens"' in box
    assert "the price is confirmed on the next page" in text_of(box)
    assert re.search(r'<script src="/static/js/buy.js[^"]*" defer></script>', html)
    assert "<script>" not in html  # no inline script
