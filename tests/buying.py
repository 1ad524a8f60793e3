"""Buying tokens as a student's browser does: the buy form, Stripe's checkout and webhook."""

from sqlalchemy import select

from soma import ledger
from soma.extensions import db
from soma.models import JournalEntry, Notification, OutboxMessage, Purchase
from soma.purchases import service
from tests.builders import make_user
from tests.conftest import STRIPE_WEBHOOK_SECRET
from tests.fakes.daraja_server import KEY as DARAJA_KEY
from tests.fakes.daraja_server import SECRET as DARAJA_SECRET
from tests.fakes.stripe_server import signed
from tests.helpers import csrf_from, text_of


def buy(client, package=None, custom=None, provider="sandbox", key="buy-1"):
    page = client.get("/buy/").get_data(as_text=True)
    data = {"csrf_token": csrf_from(page), "provider": provider, "key": key}
    if package is not None:
        data["package"] = package
    if custom is not None:
        data["package"], data["custom_tokens"] = "custom", custom
    return client.post("/buy/", data=data)


def package_id(app, tokens: int) -> int:
    with app.app_context():
        return next(q.package_id for q in service.package_quotes() if q.tokens == tokens)


def credits_of(app, purchase_id: int) -> list[tuple[str, int]]:
    with app.app_context():
        rows = db.session.execute(
            select(JournalEntry.kind, JournalEntry.tokens)
            .where(JournalEntry.reference_type == "purchase")
            .where(JournalEntry.reference_id == purchase_id)
            .order_by(JournalEntry.id)
        ).all()
        return [tuple(row) for row in rows]


def checkout(app, client, tokens=100) -> tuple[int, str]:
    """Buy a package by card; return the purchase id and its Checkout Session id."""
    response = buy(client, package=package_id(app, tokens), provider="stripe", key=f"k{tokens}")
    assert response.status_code == 303, text_of(response.get_data(as_text=True))
    session_id = response.headers["Location"].rsplit("/", 1)[1]
    with app.app_context():
        purchase = db.session.scalars(
            select(Purchase).where(Purchase.checkout_session_id == session_id)
        ).one()
        return purchase.id, session_id


def post_event(
    client, payload: dict, secret: str = STRIPE_WEBHOOK_SECRET, timestamp: int | None = None
):
    body, header = signed(payload, secret, timestamp)
    return client.post(
        "/webhooks/stripe",
        data=body,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )


def mpesa_settings(daraja_url: str, callback_secret: str) -> dict:
    """The app settings that offer M-Pesa against the fake Daraja at `daraja_url`."""
    return {
        "MPESA_BASE_URL": daraja_url,
        "MPESA_CONSUMER_KEY": DARAJA_KEY,
        "MPESA_CONSUMER_SECRET": DARAJA_SECRET,
        "MPESA_SHORTCODE": "174379",
        "MPESA_PASSKEY": "passkey",
        "MPESA_CALLBACK_SECRET": callback_secret,
        "MPESA_KES_PER_USD": "129.50",
    }


def replay_credits(purchase_id: int, user_id: int, tokens: int, bonus: int) -> None:
    """Credit a fulfilled purchase's tokens and bonus again through the ledger, as Python
    writes them (key, kind, source, reference, memo): each must be a replay of the entry
    fulfil wrote, not a second credit nor a refusal."""
    purchase = db.session.get(Purchase, purchase_id)
    for part, kind, amount, memo in (
        ("tokens", "purchase", tokens, service._memo(purchase)),
        ("bonus", "bonus", bonus, f"Bonus with purchase #{purchase_id}"),
    ):
        again = ledger.credit(
            user_id,
            amount,
            key=f"purchase:{purchase_id}:{part}",
            kind=kind,
            source=dict(service.PARTS)[part],
            reference=("purchase", purchase_id),
            memo=memo,
        )
        assert again.replayed
    db.session.commit()


def sandbox_purchase(student=None, tokens: int = 250, bonus: bool = True, key: str = "") -> int:
    """A pending sandbox purchase of `student`'s (a new student's if none), committed: the
    package of `tokens` with its bonus, or a custom amount without one."""
    student = student or make_user("student")
    if bonus:
        chosen = next(q for q in service.package_quotes() if q.tokens == tokens)
    else:
        chosen = service.quote(custom_tokens=tokens)
    key = key or f"buy-{student.id}-{tokens}-{bonus}"
    purchase = service.start(student, chosen, service.Provider.SANDBOX, key)
    db.session.commit()
    return purchase.id


def credit_mail_of(purchase_id: int):
    """The credit's notification (id, message, link) and its email (subject, body)."""
    note = db.session.execute(
        select(Notification.id, Notification.message, Notification.link).where(
            Notification.link == f"/buy/purchases/{purchase_id}"
        )
    ).one()
    mail = db.session.execute(
        select(OutboxMessage.subject, OutboxMessage.body).where(
            OutboxMessage.key == f"notification:{note.id}"
        )
    ).one()
    return note, mail


def point_credit_at(purchase_id: int, entry_id: int | None, **also) -> None:
    """Tamper with a purchase's `credited_entry_id` (and any `also` columns) past the app,
    as someone writing the database could, and commit."""
    db.session.execute(
        Purchase.__table__.update()
        .where(Purchase.id == purchase_id)
        .values(credited_entry_id=entry_id, **also)
    )
    db.session.commit()
