"""The teacher's payout method and withdrawal pages, and the admin's withdrawal queue."""

import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from soma import clock as app_clock
from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.forms import EXPIRED
from soma.models import PayoutMethod, User, Withdrawal, WithdrawalEvent
from soma.payouts import withdrawals as service
from tests.builders import fund, make_teacher, make_withdrawal, payout_method
from tests.helpers import balances, confirm_post, csrf_from, hidden_fields, text_of

KEY = re.compile(
    r'name="key" type="hidden" value="([^"]+)"|type="hidden" name="key" value="([^"]+)"'
)


@pytest.fixture
def teacher(app, auth, clock):
    made = auth.login_as("teacher", name="Tara Teacher")
    with app.app_context():
        fund(made.id, 300)
    return made


def form_key(html: str) -> str:
    found = re.search(r'<input[^>]*name="key"[^>]*>', html)
    assert found, "no key on the page"
    return re.search(r'value="([^"]+)"', found.group(0)).group(1)


def add_sandbox(client):
    page = client.get("/payout-methods").get_data(as_text=True)
    return client.post("/payout-methods", data={"csrf_token": csrf_from(page), "kind": "sandbox"})


def table_of(response) -> str:
    """The text of the admin queue's rows (not its filters)."""
    html = response.get_data(as_text=True)
    return text_of(html.split('data-testid="admin-withdrawals"')[1].split("</tbody>")[0]).split(
        "Review ", 1
    )[1]


def method_id(app, user_id: int) -> int:
    with app.app_context():
        return db.session.scalar(select(PayoutMethod.id).where(PayoutMethod.user_id == user_id))


def review(client, amount: str, method: int):
    page = client.get("/withdrawals/new").get_data(as_text=True)
    return client.post(
        "/withdrawals/review",
        data={"csrf_token": csrf_from(page), "amount": amount, "method": str(method)},
    )


def confirm(client, amount: str, method: int, key: str, tokens: int = 250):
    """Post a confirmation as its page would: the amount, method, key and quoted tokens."""
    page = client.get("/withdrawals/new").get_data(as_text=True)
    return client.post(
        "/withdrawals",
        data={
            "csrf_token": csrf_from(page),
            "amount": amount,
            "method": str(method),
            "key": key,
            "tokens": str(tokens),
        },
    )


def press_confirm(client, confirmation):
    """Press Withdraw on a confirmation page: post back exactly its hidden fields."""
    return client.post("/withdrawals", data=hidden_fields(confirmation.get_data(as_text=True)))


def test_a_teacher_adds_a_sandbox_method_withdraws_ten_dollars_and_sees_it_paid(
    app, client, teacher, clock
):
    assert "You have no payout method yet" in text_of(client.get("/payout-methods").get_data(True))
    assert add_sandbox(client).status_code == 303
    methods_page = text_of(client.get("/payout-methods").get_data(as_text=True))
    assert "Test payout (sandbox) Default" in methods_page
    assert "not available on this site" in methods_page  # Stripe and M-Pesa (unset) say so
    method = method_id(app, teacher.id)

    shown = review(client, "10", method)
    assert shown.status_code == 200
    html = shown.get_data(as_text=True)
    text = text_of(html)
    assert "You withdraw $10.00 Tokens held 250 tokens (worth $10.00) Fee $0.50" in text
    assert "You receive $9.50" in text
    assert "You keep 50 tokens available" in text
    assert "waits for an admin" not in text
    with app.app_context():
        assert balances(teacher.id) == (300, 0)  # nothing held until confirmed

    key = form_key(html)
    made = confirm(client, "10", method, key)
    assert made.status_code == 303
    location = made.headers["Location"]
    assert confirm(client, "10", method, key).headers["Location"] == location  # a double submit
    refused = confirm(client, "11", method, key)
    assert refused.status_code == 409
    assert "already used for another withdrawal" in text_of(refused.get_data(as_text=True))
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Withdrawal)) == 1
        assert balances(teacher.id) == (50, 250)

    page = text_of(client.get(location).get_data(as_text=True))
    assert "Processing On its way" in page
    assert "Locked 250 tokens" in page
    withdrawal_id = int(location.rsplit("/", 1)[1])
    clock.advance(seconds=5)
    with app.app_context():
        assert service.sweep() == 1
    status = client.get(f"/withdrawals/{withdrawal_id}/status").get_data(as_text=True)
    assert "hx-trigger" not in status  # finished: it stops polling
    assert "Paid $9.50 sent (reference SANDBOX-" in text_of(status)
    listed = text_of(client.get("/withdrawals").get_data(as_text=True))
    assert "$10.00 $0.50 $9.50 250 tokens Paid" in listed
    assert "Requested" in listed and "Processing" in listed
    notes = text_of(client.get("/notifications/").get_data(as_text=True))
    assert f"Your withdrawal #{withdrawal_id} was paid: $9.50 sent ($0.50 fee)." in notes
    with app.app_context():
        assert balances(teacher.id) == (50, 0)
        assert run_audit() == []


def test_the_review_refuses_what_cannot_be_withdrawn_with_a_clear_message(app, client, teacher):
    add_sandbox(client)
    method = method_id(app, teacher.id)
    for amount, message in [
        ("20", "$20.00 needs 500 tokens and you have 300 tokens available to withdraw."),
        ("9.99", "The least you can withdraw is $10.00."),
        ("ten", "Enter an amount in US dollars, such as 25.00."),
        ("10.001", "Enter the amount in whole cents, such as 25.50."),
    ]:
        answer = review(client, amount, method)
        assert answer.status_code == 422
        assert message in text_of(answer.get_data(as_text=True))
    with app.app_context():
        assert balances(teacher.id) == (300, 0)


def test_a_confirmation_over_500_dollars_says_it_waits_for_an_admin(app, client, auth, clock):
    made = auth.login_as("teacher")
    with app.app_context():
        fund(made.id, 20_000)
    add_sandbox(client)
    text = text_of(review(client, "600", method_id(app, made.id)).get_data(as_text=True))
    assert "This withdrawal waits for an admin's review: it is over $500.00." in text
    assert "Fee $12.00" in text and "You receive $588.00" in text


def test_a_bank_method_shows_only_the_last_four_digits(app, client, teacher):
    page = client.get("/payout-methods").get_data(as_text=True)
    added = client.post(
        "/payout-methods",
        data={"csrf_token": csrf_from(page), "kind": "bank", "account_holder": "Tara Teacher",
              "bank_name": "Equity Bank", "account_number": "0123 4567 8901"},
    )  # fmt: skip
    assert added.status_code == 303
    html = client.get("/payout-methods").get_data(as_text=True)
    assert "Equity Bank · Tara Teacher · ••••8901" in text_of(html)
    assert "012345678901" not in html and "0123 4567" not in html
    assert "Added less than 24 hours ago" in text_of(html)
    bad = client.post(
        "/payout-methods",
        data={"csrf_token": csrf_from(html), "kind": "bank", "account_holder": "Tara",
              "bank_name": "Equity", "account_number": "12"},
    )  # fmt: skip
    assert bad.status_code == 422
    assert "4 to 34 letters and digits" in text_of(bad.get_data(as_text=True))
    stripe = client.post("/payout-methods", data={"csrf_token": csrf_from(html), "kind": "stripe"})
    assert stripe.status_code == 422
    assert "Stripe are not available on this site" in text_of(stripe.get_data(as_text=True))


def test_another_users_withdrawal_and_method_answer_404(app, client, auth, clock):
    with app.app_context():
        owner = make_teacher(300)
        withdrawal = make_withdrawal(owner, 1000)
        withdrawal_id, owner_method = withdrawal.id, withdrawal.method_id
    auth.login_as("teacher")
    assert client.get(f"/withdrawals/{withdrawal_id}").status_code == 404
    assert client.get(f"/withdrawals/{withdrawal_id}/status").status_code == 404
    assert client.get(f"/payout-methods/{owner_method}/remove").status_code == 404
    page = client.get("/payout-methods").get_data(as_text=True)
    answer = client.post(
        f"/payout-methods/{owner_method}/remove", data={"csrf_token": csrf_from(page)}
    )
    assert answer.status_code == 404
    assert client.get(f"/withdrawals/{2**63}").status_code == 404
    with app.app_context():
        assert db.session.get(PayoutMethod, owner_method).removed_at is None


def test_students_have_no_withdrawals(client, auth):
    auth.login_as("student")
    for url in ("/withdrawals", "/withdrawals/new", "/payout-methods"):
        assert client.get(url).status_code == 403


def test_the_admin_queue_filters_and_an_admin_approves_then_marks_a_bank_transfer_paid(
    app, client, auth, clock
):
    with app.app_context():
        teacher = make_teacher(1000, name="Bank Teacher")
        bank = payout_method(
            teacher, "bank", number="5566778899", now=clock.now - timedelta(days=2)
        )
        waiting = service.request(teacher, bank.id, 2000, "queue-bank")
        sandbox_paid = make_withdrawal(teacher, 1000)
        ids = (waiting.id, sandbox_paid.id)
        teacher_id = teacher.id
    admin = auth.login_as("admin", name="Ada Admin")
    queue = table_of(client.get("/admin/withdrawals?status=requested&method=bank"))
    assert queue.startswith(f"{ids[0]} ")
    assert "Bank Teacher $20.00 $19.50 Bank transfer Requested" in queue
    assert "Test payout" not in queue
    sandbox_only = table_of(client.get("/admin/withdrawals?method=sandbox&status=bogus"))
    assert sandbox_only.startswith(f"{ids[1]} ")
    assert "Test payout (sandbox) Processing" in sandbox_only
    assert "Bank transfer" not in sandbox_only
    detail = client.get(f"/admin/withdrawals/{ids[0]}").get_data(as_text=True)
    assert "5566778899" in detail  # the admin who sends the transfer reads the number
    assert "Approving says you will send $19.50 by bank transfer" in text_of(detail)

    approved = confirm_post(
        client, f"/admin/withdrawals/{ids[0]}/approve", {"csrf_token": csrf_from(detail)}
    )
    assert approved.status_code == 303
    again = confirm_post(
        client, f"/admin/withdrawals/{ids[0]}/approve", {"csrf_token": csrf_from(detail)}
    )
    assert again.status_code == 409
    assert "already processing" in text_of(again.get_data(as_text=True))
    empty = confirm_post(
        client,
        f"/admin/withdrawals/{ids[0]}/paid",
        {"csrf_token": csrf_from(detail), "reference": ""},
    )
    assert empty.status_code == 422
    paid = confirm_post(
        client,
        f"/admin/withdrawals/{ids[0]}/paid",
        {"csrf_token": csrf_from(detail), "reference": "FT26001"},
    )
    assert paid.status_code == 303
    page = text_of(client.get(f"/admin/withdrawals/{ids[0]}").get_data(as_text=True))
    assert "Paid — Ada Admin: Reference FT26001" in page
    assert "Processing — Ada Admin: Approved" in page
    assert "5566778899" not in client.get(f"/admin/withdrawals/{ids[0]}").get_data(True)
    with app.app_context():
        assert balances(teacher_id) == (1000 - 500 - 250, 250)
        actors = db.session.scalars(
            select(WithdrawalEvent.actor_id).where(WithdrawalEvent.withdrawal_id == ids[0])
        ).all()
        assert actors == [None, admin.id, admin.id]
        assert run_audit() == []


def test_an_admin_rejects_with_a_reason_the_teacher_reads(app, client, auth, clock):
    with app.app_context():
        teacher = make_teacher(20_000)
        big_id = make_withdrawal(teacher, 60_000).id
        teacher_id, teacher_email = teacher.id, db.session.get(User, teacher.id).email
    auth.login_as("admin")
    detail = client.get(f"/admin/withdrawals/{big_id}").get_data(as_text=True)
    assert "Review: it is over $500.00." in text_of(detail)
    blank = confirm_post(
        client,
        f"/admin/withdrawals/{big_id}/reject",
        {"csrf_token": csrf_from(detail), "reason": ""},
    )
    assert blank.status_code == 422
    rejected = confirm_post(
        client,
        f"/admin/withdrawals/{big_id}/reject",
        {"csrf_token": csrf_from(detail), "reason": "Please verify your identity first."},
    )
    assert rejected.status_code == 303
    with app.app_context():
        assert balances(teacher_id) == (20_000, 0)
    client.post("/logout", data={"csrf_token": csrf_from(detail)})
    auth.login(teacher_email)
    page = text_of(client.get(f"/withdrawals/{big_id}").get_data(as_text=True))
    assert "Rejected Please verify your identity first. 15,000 tokens came back" in page


def test_the_admin_queue_pages_by_id_keeping_its_filters(app, client, auth, clock, monkeypatch):
    monkeypatch.setattr("soma.admin.routes.WITHDRAWALS_PER_PAGE", 2)
    with app.app_context():
        teacher = make_teacher(2000)
        ids = [make_withdrawal(teacher, 1000).id for _ in range(3)]
    auth.login_as("admin")
    first = client.get("/admin/withdrawals?method=sandbox").get_data(as_text=True)
    assert [int(n) for n in re.findall(r"/admin/withdrawals/(\d+)\"", first)] == ids[:0:-1]
    assert f"before={ids[1]}" in first and "method=sandbox" in first
    older = client.get(f"/admin/withdrawals?method=sandbox&before={ids[1]}").get_data(True)
    assert [int(n) for n in re.findall(r"/admin/withdrawals/(\d+)\"", older)] == [ids[0]]
    assert "Older withdrawals" not in older
    assert client.get(f"/admin/withdrawals?before={2**63}").status_code == 200  # ignored


def test_a_teacher_makes_another_method_the_default_and_removes_one(app, client, teacher):
    add_sandbox(client)
    page = client.get("/payout-methods").get_data(as_text=True)
    client.post(
        "/payout-methods",
        data={"csrf_token": csrf_from(page), "kind": "bank", "account_holder": "Tara Teacher",
              "bank_name": "KCB", "account_number": "44556677"},
    )  # fmt: skip
    with app.app_context():
        sandbox_id, bank_id = db.session.scalars(
            select(PayoutMethod.id)
            .where(PayoutMethod.user_id == teacher.id)
            .order_by(PayoutMethod.id)
        ).all()
    made = client.post(f"/payout-methods/{bank_id}/default", data={"csrf_token": csrf_from(page)})
    assert made.status_code == 303
    assert "Bank transfer Default" in text_of(client.get("/payout-methods").get_data(True))
    assert client.post(f"/payout-methods/{bank_id}/default").status_code == 400  # no CSRF
    confirm_page = client.get(f"/payout-methods/{bank_id}/remove").get_data(as_text=True)
    assert "Remove this payout method?" in text_of(confirm_page)
    removed = client.post(
        f"/payout-methods/{bank_id}/remove", data={"csrf_token": csrf_from(confirm_page)}
    )
    assert removed.status_code == 303
    text = text_of(client.get("/payout-methods").get_data(as_text=True))
    assert "••••6677" not in text and "Test payout (sandbox) Default" in text
    new_page = client.get("/withdrawals/new").get_data(as_text=True)
    assert f'<option selected value="{sandbox_id}">' in new_page
    assert "Withdraw" in text_of(client.get("/wallet/").get_data(as_text=True))


def test_a_rate_changed_since_the_confirmation_is_refused_and_holds_nothing(app, client, teacher):
    with app.app_context():
        fund(teacher.id, 700)
    assert add_sandbox(client).status_code == 303
    method = method_id(app, teacher.id)
    shown = review(client, "10", method)
    assert "Tokens held 250 tokens" in text_of(shown.get_data(as_text=True))
    assert hidden_fields(shown.get_data(as_text=True))["tokens"] == "250"
    with app.app_context(), ledger.atomic():  # a lower teacher rate, published meanwhile
        ledger.publish_pricing("teacher", 10, 20, 10, app_clock.now(), backdate=True)

    refused = press_confirm(client, shown)
    assert refused.status_code == 422
    assert service.RATE_CHANGED in text_of(refused.get_data(as_text=True))
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Withdrawal)) == 0
        assert balances(teacher.id) == (1000, 0)  # nothing held

    again = review(client, "10", method)  # reviewed again: the new quote, then held as shown
    assert "Tokens held 500 tokens" in text_of(again.get_data(as_text=True))
    assert press_confirm(client, again).status_code == 303
    with app.app_context():
        assert db.session.scalar(select(Withdrawal.tokens)) == 500
        assert balances(teacher.id) == (500, 500)


@pytest.mark.parametrize(
    "tokens", ["", "249", "-250", "250.0", "2.5e2", " 250x", "9" * 25, "\x00250"]
)
def test_a_confirmation_without_its_quoted_tokens_is_refused_and_holds_nothing(
    app, client, teacher, tokens
):
    assert add_sandbox(client).status_code == 303
    method = method_id(app, teacher.id)
    fields = hidden_fields(review(client, "10", method).get_data(as_text=True))
    refused = client.post("/withdrawals", data={**fields, "tokens": tokens})
    assert refused.status_code == 422
    page = text_of(refused.get_data(as_text=True))
    assert (service.RATE_CHANGED if tokens == "249" else EXPIRED) in page
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Withdrawal)) == 0
        assert balances(teacher.id) == (300, 0)


def test_the_admin_page_offers_to_reject_a_stranded_sandbox_withdrawal_only_when_stranded(
    app, client, auth, clock
):
    with app.app_context():
        teacher = make_teacher(300)
        withdrawal_id = make_withdrawal(teacher, 1000).id
        teacher_id = teacher.id
    auth.login_as("admin")
    detail = client.get(f"/admin/withdrawals/{withdrawal_id}").get_data(as_text=True)
    assert f"Reject withdrawal #{withdrawal_id}" not in detail  # the sandbox pays it
    app.config["SOMA_ENV"] = "production"
    detail = client.get(f"/admin/withdrawals/{withdrawal_id}").get_data(as_text=True)
    assert f"Reject withdrawal #{withdrawal_id}" in detail
    assert "Mark paid" not in text_of(detail)
    rejected = confirm_post(
        client,
        f"/admin/withdrawals/{withdrawal_id}/reject",
        {"csrf_token": csrf_from(detail), "reason": "Test payouts are off."},
    )
    assert rejected.status_code == 303
    after = client.get(f"/admin/withdrawals/{withdrawal_id}").get_data(as_text=True)
    assert f"Reject withdrawal #{withdrawal_id}" not in after
    assert "Test payouts are off." in text_of(after)
    with app.app_context():
        assert balances(teacher_id) == (300, 0)
        assert run_audit() == []


@pytest.mark.parametrize(
    "refused",
    [
        {"account_holder": ""},  # refused by the service: no holder
        {"account_holder": "T" * 500},  # refused by the form: too long
        {"bank_name": "Equity\x00"},  # refused by the form: a control character
        {"kind": "stripe"},  # a kind not on offer
        {"account_number": "9999 8888 7777 6666 5555 4444 3333 2222 1111"},  # too long a number
    ],
)
def test_a_refused_bank_method_never_shows_its_account_number_back(app, client, teacher, refused):
    page = client.get("/payout-methods").get_data(as_text=True)
    fields = {"kind": "bank", "account_holder": "Tara Teacher", "bank_name": "Equity",
              "account_number": "9999 8888 7777 6666", **refused}  # fmt: skip
    sent = client.post("/payout-methods", data={"csrf_token": csrf_from(page), **fields})
    assert sent.status_code == 422
    html = sent.get_data(as_text=True)
    typed = fields["account_number"]
    for shown in (typed, typed.replace(" ", ""), typed[-9:], typed.replace(" ", "")[-8:]):
        assert shown not in html
    number_input = re.search(r'<input[^>]*name="account_number"[^>]*>', html).group(0)
    assert re.search(r'value="[^"]', number_input) is None  # an empty field, to type again
    if "account_number" not in refused:  # (a refused number says why, not "type it again")
        assert "Type the account number again: it is never shown back." in text_of(html)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(PayoutMethod)) == 0
        assert balances(teacher.id) == (300, 0)


def test_a_refused_duplicate_bank_method_never_shows_its_account_number_back(app, client, teacher):
    page = client.get("/payout-methods").get_data(as_text=True)
    fields = {"csrf_token": csrf_from(page), "kind": "bank", "account_holder": "Tara Teacher",
              "bank_name": "Equity", "account_number": "5555 4444 3333"}  # fmt: skip
    assert client.post("/payout-methods", data=fields).status_code == 303
    again = client.post("/payout-methods", data=fields)
    assert again.status_code == 422
    html = again.get_data(as_text=True)
    assert "already one of your payout methods" in text_of(html)
    assert "5555 4444 3333" not in html and "555544443333" not in html
    assert "••••3333" in text_of(html)  # the method it already has, masked as ever
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(PayoutMethod)) == 1
