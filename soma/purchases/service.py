"""Purchases: what a student asks to buy, and fulfilment exactly once.

Every provider ends in the same three functions: `fulfil` (paid: credit the
tokens), `fail` and `expire`. Each is a compare-and-set on the purchase's
status in one transaction with its ledger entries, so a webhook, a success
page and a retry racing for one purchase credit it once: one of them moves
the status, the rest find it moved. The ledger entries are keyed by the
purchase too (`purchase:<id>:tokens`, `purchase:<id>:bonus`).
"""

import math
from dataclasses import dataclass
from decimal import Decimal

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from soma import clock, ledger
from soma.errors import FieldRefusal, SomaError
from soma.extensions import db
from soma.ledger.pricing import get_token_pricing, tokens_to_cents
from soma.models import EntryKind, PlatformAccount, PricingUserType, Role, User
from soma.models.purchase import (
    CUSTOM_MAX,
    CUSTOM_MIN,
    Provider,
    Purchase,
    PurchaseEvent,
    PurchaseStatus,
    TokenPackage,
)
from soma.notifications.service import notify
from soma.purchases import audit as _audit  # noqa: F401 (registers the audit's purchase check)

P = PurchaseStatus
# A payment the provider confirms is credited even after we gave up waiting:
# the student's money was taken.
PAYABLE = (P.PENDING.value, P.FAILED.value, P.EXPIRED.value)


class PurchaseRefused(FieldRefusal):
    """A purchase that cannot be made as asked."""

    title = "Cannot buy that"


@dataclass(frozen=True)
class Quote:
    """What a choice costs: tokens, bonus, and the price in US cents (and KES, if set)."""

    tokens: int
    bonus_tokens: int
    usd_cents: int
    kes: int | None
    package_id: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.tokens + self.bonus_tokens


def kes_per_usd() -> Decimal | None:
    rate = current_app.config.get("MPESA_KES_PER_USD")
    return Decimal(rate) if rate else None


def _kes(usd_cents: int) -> int | None:
    """Whole shillings for `usd_cents` at the configured rate, rounded up."""
    rate = kes_per_usd()
    if rate is None:
        return None
    return math.ceil(Decimal(usd_cents) * rate / 100)


def providers() -> list[Provider]:
    """The providers a student may choose now, in the order offered.

    Stripe when its keys are set. The sandbox when no provider is configured,
    never in production. (M-Pesa joins when its client lands.)
    """
    from soma.purchases import stripe_checkout

    offered = [Provider.STRIPE] if stripe_checkout.configured() else []
    if not offered and sandbox_allowed():
        offered.append(Provider.SANDBOX)
    return offered


def sandbox_allowed() -> bool:
    return current_app.config["SOMA_ENV"] != "production"


def packages() -> list[TokenPackage]:
    return list(
        db.session.scalars(
            select(TokenPackage)
            .where(TokenPackage.active)
            .order_by(TokenPackage.sort_order, TokenPackage.tokens)
        )
    )


def package_quotes() -> list[Quote]:
    return [
        Quote(p.tokens, p.bonus_tokens, p.price_cents, _kes(p.price_cents), p.id)
        for p in packages()
    ]


def quote(package_id: int | None = None, custom_tokens: int | None = None) -> Quote:
    """The price of a package, or of a custom number of tokens at the student rate."""
    if package_id is not None:
        package = db.session.get(TokenPackage, package_id)
        if package is None or not package.active:
            raise PurchaseRefused("That package is not on sale. Choose another.", "package")
        return Quote(
            package.tokens,
            package.bonus_tokens,
            package.price_cents,
            _kes(package.price_cents),
            package.id,
        )
    if custom_tokens is None:
        raise PurchaseRefused("Choose a package or enter a number of tokens.", "package")
    if not CUSTOM_MIN <= custom_tokens <= CUSTOM_MAX:
        raise PurchaseRefused(
            f"Buy between {CUSTOM_MIN:,} and {CUSTOM_MAX:,} tokens at a time.", "custom_tokens"
        )
    pricing = get_token_pricing(PricingUserType.STUDENT, clock.now())
    cents = tokens_to_cents(custom_tokens, pricing, "up")
    return Quote(custom_tokens, 0, cents, _kes(cents))


def start(user: User, chosen: Quote, provider: Provider, key: str, phone: str | None = None):
    """Record a pending purchase; a repeated `key` returns the first one."""
    existing = db.session.scalars(select(Purchase).where(Purchase.idempotency_key == key)).first()
    if existing is not None:
        if existing.user_id != user.id:
            raise PurchaseRefused("This form was already used. Reload the page.")
        return existing
    if user.role != Role.STUDENT:
        raise PurchaseRefused("Only students buy tokens.")
    if provider not in providers():
        raise PurchaseRefused("Choose one of the payment methods offered.", "provider")
    kes = provider == Provider.MPESA
    if kes and chosen.kes is None:
        raise PurchaseRefused("M-Pesa payments are not available right now.", "provider")
    now = clock.now()
    purchase = Purchase(
        idempotency_key=key,
        user_id=user.id,
        package_id=chosen.package_id,
        tokens=chosen.tokens,
        bonus_tokens=chosen.bonus_tokens,
        amount_minor=chosen.kes if kes else chosen.usd_cents,
        currency="KES" if kes else "USD",
        provider=provider.value,
        phone=phone,
        created_at=now,
        updated_at=now,
    )
    db.session.add(purchase)
    try:
        db.session.flush()
        db.session.add(
            PurchaseEvent(
                purchase_id=purchase.id,
                from_status=None,
                to_status=P.PENDING.value,
                source="student",
                at=now,
            )
        )
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        return start(user, chosen, provider, key, phone)
    return purchase


def purchase_for(user: User, purchase_id: int) -> Purchase | None:
    """The purchase if it is `user`'s (or `user` is an admin); None otherwise (404)."""
    query = select(Purchase).where(Purchase.id == purchase_id)
    if user.role != Role.ADMIN:
        query = query.where(Purchase.user_id == user.id)
    return db.session.scalars(query.execution_options(populate_existing=True)).first()


def history(user: User, limit: int = 50) -> list[Purchase]:
    return list(
        db.session.scalars(
            select(Purchase)
            .where(Purchase.user_id == user.id)
            .order_by(Purchase.id.desc())
            .limit(limit)
        )
    )


class _Stale(Exception):
    """The purchase changed between reading and writing it (SQLite has no row locks)."""


def _move(
    purchase_id: int,
    allowed: tuple[str, ...],
    to: PurchaseStatus,
    source: str,
    note: str = "",
    **values,
) -> Purchase | None:
    """Move the purchase from one of `allowed` to `to` in the current transaction.

    Returns the purchase if this call moved it; None if it is not in `allowed`
    (another call moved it first, or it is past that point). The row is read
    locked (FOR UPDATE on PostgreSQL), so the history records the true change.
    """
    now = clock.now()
    current = db.session.scalars(
        select(Purchase)
        .where(Purchase.id == purchase_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if current.status not in allowed:
        return None
    moved = db.session.execute(
        update(Purchase)
        .where(Purchase.id == purchase_id, Purchase.version == current.version)
        .values(status=to.value, version=Purchase.version + 1, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    ).rowcount
    if moved != 1:
        raise _Stale()
    db.session.add(
        PurchaseEvent(
            purchase_id=purchase_id,
            from_status=current.status,
            to_status=to.value,
            source=source,
            note=note[:255],
            at=now,
        )
    )
    return current


def _retrying(work) -> None:
    """Run `work` in a transaction, again if the purchase changed under it."""
    for _ in range(3):
        try:
            with ledger.atomic():
                work()
            return
        except _Stale:
            continue
    raise SomaError("This purchase changed several times at once. Reload the page.")


def fulfil(purchase_id: int, source: str, **refs) -> Purchase:
    """The provider says the purchase is paid: credit its tokens, exactly once.

    `refs` records the provider's references (payment_intent_id, receipt, ...).
    Safe to call any number of times, from any number of places at once.
    """

    def work():
        purchase = _move(purchase_id, PAYABLE, P.PAID, source, failure_reason=None, **refs)
        if purchase is None:
            return
        reference = ("purchase", purchase_id)
        entry = ledger.credit(
            purchase.user_id,
            purchase.tokens,
            key=f"purchase:{purchase_id}:tokens",
            kind=EntryKind.PURCHASE,
            source=PlatformAccount.ISSUANCE,
            reference=reference,
            memo=_memo(purchase),
        )
        if purchase.bonus_tokens:
            ledger.credit(
                purchase.user_id,
                purchase.bonus_tokens,
                key=f"purchase:{purchase_id}:bonus",
                kind=EntryKind.BONUS,
                source=PlatformAccount.PROMOTIONS,
                reference=reference,
                memo=f"Bonus with purchase #{purchase_id}",
            )
        db.session.execute(
            update(Purchase)
            .where(Purchase.id == purchase_id)
            .values(credited_entry_id=entry.id)
            .execution_options(synchronize_session=False)
        )
        notify(
            purchase.user_id,
            "purchase_credited",
            f"{purchase.total_tokens:,} tokens were added to your wallet "
            f"(purchase #{purchase_id}).",
            link=f"/buy/purchases/{purchase_id}",
        )

    _retrying(work)
    return _fresh(purchase_id)


def fail(purchase_id: int, source: str, reason: str) -> Purchase:
    """The payment did not go through; only a pending purchase can fail."""
    pending = (P.PENDING.value,)
    _retrying(
        lambda: _move(purchase_id, pending, P.FAILED, source, reason, failure_reason=reason[:255])
    )
    return _fresh(purchase_id)


def expire(purchase_id: int, source: str) -> Purchase:
    """The checkout was abandoned; only a pending purchase expires."""
    pending = (P.PENDING.value,)
    _retrying(lambda: _move(purchase_id, pending, P.EXPIRED, source, "The checkout expired."))
    return _fresh(purchase_id)


def _fresh(purchase_id: int) -> Purchase:
    return db.session.scalars(
        select(Purchase).where(Purchase.id == purchase_id).execution_options(populate_existing=True)
    ).one()


def _memo(purchase: Purchase) -> str:
    price = (
        f"${purchase.amount_minor / 100:,.2f}"
        if purchase.currency == "USD"
        else f"KES {purchase.amount_minor:,}"
    )
    return f"Bought {purchase.tokens:,} tokens for {price} ({purchase.provider_label})"
