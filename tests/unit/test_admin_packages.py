"""The admin's packages: added and retired, never edited; purchases keep what they were sold."""

import pytest
from sqlalchemy import select

from soma.admin import actions
from soma.extensions import db
from soma.models import AdminAction, Purchase, TokenPackage
from soma.purchases import service
from tests.buying import buy, credits_of, package_id
from tests.helpers import balances, confirm_post, csrf_from, hidden_fields, text_of


def records() -> list[AdminAction]:
    return list(db.session.scalars(select(AdminAction).order_by(AdminAction.id)))


def packages() -> list[tuple]:
    return [
        tuple(row)
        for row in db.session.execute(
            select(
                TokenPackage.id,
                TokenPackage.tokens,
                TokenPackage.bonus_tokens,
                TokenPackage.price_cents,
                TokenPackage.active,
            ).order_by(TokenPackage.id)
        )
    ]


def add_form(client, **fields) -> dict:
    page = client.get("/admin/packages").get_data(as_text=True)
    base = {"tokens": "1000", "bonus_tokens": "150", "price": "90.00", "sort_order": "7"}
    return {"csrf_token": csrf_from(page), **base, **fields}


def retire(client, package: int, confirm: bool = True):
    page = client.get("/admin/packages").get_data(as_text=True)
    data = {"csrf_token": csrf_from(page)}
    url = f"/admin/packages/{package}/retire"
    return confirm_post(client, url, data) if confirm else client.post(url, data=data)


def test_an_added_package_is_confirmed_recorded_and_on_the_buy_page(app, client, auth):
    admin = auth.login_as("admin")
    with app.app_context():
        before = packages()
    review = client.post("/admin/packages", data=add_form(client))
    page = text_of(review.get_data(as_text=True))
    assert "Add a package" in page
    assert "Package 1,000 tokens + 150 tokens bonus for $90.00" in page
    with app.app_context():
        assert packages() == before  # the review added nothing
    done = client.post("/admin/packages", data=hidden_fields(review.get_data(as_text=True)))
    assert done.status_code == 303
    with app.app_context():
        new_id, *rest = packages()[-1]
        assert rest == [1000, 150, 9000, True]
        (record,) = records()
        assert (record.admin_id, record.action, record.object_type, record.object_id) == (
            admin.id,
            "add_package",
            "package",
            new_id,
        )
        assert record.before is None
        assert actions.values(record.after) == {
            "active": True,
            "bonus_tokens": 150,
            "price_cents": 9000,
            "sort_order": 7,
            "tokens": 1000,
        }
    listed = text_of(client.get("/admin/packages").get_data(as_text=True))
    assert f"{new_id} 1,000 tokens 150 tokens $90.00 7 0 (0)" in listed
    auth.logout()
    auth.login_as("student")
    assert "1,000 tokens + 150 bonus $90.00" in text_of(client.get("/buy/").get_data(True))


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"tokens": "0"}, "Enter a number of tokens: a whole number from 1 to 1,000,000."),
        ({"tokens": "-5"}, "Enter a number of tokens"),
        ({"tokens": "9" * 40}, "Enter a number of tokens"),
        ({"bonus_tokens": "2000000"}, "Enter the bonus tokens"),
        ({"price": "0.001"}, "Enter the price in whole cents"),
        ({"price": "sNaN"}, "Enter a price in US dollars"),
        ({"price": "100000.01"}, "at most $100,000.00"),
        ({"sort_order": "x"}, "Enter its place"),
    ],
)
def test_a_bad_package_is_a_form_error_and_adds_nothing(app, client, auth, fields, message):
    auth.login_as("admin")
    with app.app_context():
        before = packages()
    answer = client.post("/admin/packages", data=add_form(client, confirmed="yes", **fields))
    assert answer.status_code == 422
    assert message in text_of(answer.get_data(as_text=True))
    with app.app_context():
        assert packages() == before and records() == []


def test_a_retired_package_leaves_the_buy_page_and_purchases_keep_theirs(app, client, auth):
    student = auth.login_as("student")
    chosen = package_id(app, 250)
    paid = int(buy(client, package=chosen, key="paid-1").headers["Location"].rsplit("/", 1)[1])
    page = client.get(f"/buy/sandbox/{paid}").get_data(as_text=True)
    client.post(f"/buy/sandbox/{paid}/pay", data={"csrf_token": csrf_from(page)})
    waiting = int(buy(client, package=chosen, key="wait-1").headers["Location"].rsplit("/", 1)[1])
    paid_page = text_of(client.get(f"/buy/purchases/{paid}").get_data(as_text=True))
    with app.app_context():
        assert balances(student.id) == (260, 0)
        paid_credits = credits_of(app, paid)

    auth.logout()
    admin = auth.login_as("admin")
    review = retire(client, chosen, confirm=False)
    text = text_of(review.get_data(as_text=True))
    assert f"Retire package #{chosen}" in text and "Purchases of it 2" in text
    assert retire(client, chosen).status_code == 303
    listed = client.get("/admin/packages").get_data(as_text=True)
    retired_table = listed.split('data-testid="retired-packages"')[1]
    assert f'data-testid="package-{chosen}"' in retired_table
    assert f"{chosen} 250 tokens 10 tokens $25.00 2 (1)" in text_of(retired_table)
    again = retire(client, chosen)  # a second retire (another tab): recorded once
    assert again.status_code == 303
    assert "already retired" in text_of(client.get("/admin/packages").get_data(True))
    with app.app_context():
        (record,) = records()
        assert (record.admin_id, record.action, record.object_id) == (
            admin.id,
            "retire_package",
            chosen,
        )
        assert actions.values(record.before)["active"] is True
        assert actions.values(record.after)["active"] is False
        assert db.session.get(TokenPackage, chosen).price_cents == 2500  # never edited

    auth.logout()
    auth.login(student.email)
    offer = text_of(client.get("/buy/").get_data(as_text=True))
    assert "250 tokens + 10 bonus $25.00" not in offer
    assert "100 tokens $10.00" in offer
    refused = buy(client, package=chosen, key="after-1")
    assert refused.status_code == 422
    assert "That package is not on sale. Choose another." in text_of(refused.get_data(True))
    # The purchases already made keep their tokens, bonus and price.
    assert text_of(client.get(f"/buy/purchases/{paid}").get_data(as_text=True)) == paid_page
    page = client.get(f"/buy/sandbox/{waiting}").get_data(as_text=True)
    assert client.post(
        f"/buy/sandbox/{waiting}/pay", data={"csrf_token": csrf_from(page)}
    ).status_code in (302, 303)
    with app.app_context():
        assert credits_of(app, paid) == paid_credits
        kept = db.session.get(Purchase, waiting)
        assert (kept.status, kept.tokens, kept.bonus_tokens, kept.amount_minor) == (
            "paid",
            250,
            10,
            2500,
        )
        assert balances(student.id) == (520, 0)
        assert (
            db.session.scalar(select(Purchase.id).where(Purchase.idempotency_key.like("%after-1%")))
            is None
        )
        assert chosen not in [q.package_id for q in service.package_quotes()]


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_only_admins_see_add_or_retire_packages(app, client, auth, role):
    auth.login_as(role)
    with app.app_context():
        before = packages()
    chosen = before[0][0]
    assert client.get("/admin/packages").status_code == 403
    token = csrf_from(client.get("/notifications/").get_data(as_text=True))
    added = client.post(
        "/admin/packages",
        data={"csrf_token": token, "tokens": "5", "price": "1.00", "confirmed": "yes"},
    )
    retired = client.post(
        f"/admin/packages/{chosen}/retire", data={"csrf_token": token, "confirmed": "yes"}
    )
    assert (added.status_code, retired.status_code) == (403, 403)
    with app.app_context():
        assert packages() == before and records() == []


def test_retiring_a_package_that_does_not_exist_is_404(app, client, auth):
    auth.login_as("admin")
    page = client.get("/admin/packages").get_data(as_text=True)
    for bad in ("999999", "0", "-1", "9" * 30, "x"):
        answer = client.post(
            f"/admin/packages/{bad}/retire",
            data={"csrf_token": csrf_from(page), "confirmed": "yes"},
        )
        assert answer.status_code == 404
    with app.app_context():
        assert records() == []
