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

from soma import clock, ledger, money
from soma.errors import FieldRefusal, SomaError
from soma.extensions import db
from soma.ledger.pricing import get_token_pricing, tokens_to_cents
from soma.models import EntryKind, PlatformAccount, PricingUserType, Role, User, Wallet
from soma.models.purchase import (
    CUSTOM_MAX,
    CUSTOM_MIN,
    Provider,
    Purchase,
    PurchaseEvent,
    PurchaseStatus,
    TokenPackage,
)
from soma.money import tokens
from soma.notifications.service import notify

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
    never in production. M-Pesa when Daraja's keys and the shilling rate are set.
    """
    from soma.purchases import mpesa, stripe_checkout

    offered = [Provider.STRIPE] if stripe_checkout.configured() else []
    if mpesa.configured():
        offered.append(Provider.MPESA)
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
    """Run `work` in a transaction, again if the purchase or a balance changed under it."""
    for _ in range(3):
        try:
            with ledger.atomic():
                work()
            return
        except (_Stale, ledger.InsufficientTokens):
            continue  # (a refund read a balance that was spent meanwhile: read it again)
    raise SomaError("This purchase changed several times at once. Reload the page.")


# A purchase's tokens come from issuance and its bonus from promotions; whatever
# moves them later (a refund, a dispute) moves each part against its own account.
PARTS = (("tokens", PlatformAccount.ISSUANCE), ("bonus", PlatformAccount.PROMOTIONS))


def _give(purchase: Purchase, amounts: tuple[int, int], key: str, kinds, memos):
    """Credit the student (purchased part, bonus part), each from its own platform account,
    keyed `<key>:tokens` and `<key>:bonus`; return the first entry written, if any."""
    first = None
    for (part, account), amount, kind, memo in zip(PARTS, amounts, kinds, memos, strict=True):
        if amount:
            entry = ledger.credit(
                purchase.user_id,
                amount,
                key=f"{key}:{part}",
                kind=kind,
                source=account,
                reference=("purchase", purchase.id),
                memo=memo,
            )
            first = first or entry
    return first


def _take(purchase: Purchase, amounts: tuple[int, int], key: str, memo: str) -> None:
    """Debit the student (purchased part, bonus part) back to each part's platform account."""
    for (part, account), amount in zip(PARTS, amounts, strict=True):
        if amount:
            ledger.debit(
                purchase.user_id,
                amount,
                key=f"{key}:{part}",
                kind=EntryKind.REFUND,
                to=account,
                reference=("purchase", purchase.id),
                memo=memo,
            )


def fulfil(purchase_id: int, source: str, **refs) -> Purchase:
    """The provider says the purchase is paid: credit its tokens, exactly once.

    `refs` records the provider's references (payment_intent_id, receipt, ...).
    Safe to call any number of times, from any number of places at once.
    """

    def work():
        purchase = _move(purchase_id, PAYABLE, P.PAID, source, failure_reason=None, **refs)
        if purchase is None:
            return
        entry = _give(
            purchase,
            (purchase.tokens, purchase.bonus_tokens),
            f"purchase:{purchase_id}",
            kinds=(EntryKind.PURCHASE, EntryKind.BONUS),
            memos=(_memo(purchase), f"Bonus with purchase #{purchase_id}"),
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


# Refunds and disputes ------------------------------------------------------------------------

CREDITED = (P.PAID.value, P.REFUNDED.value, P.DISPUTED.value)


def _locked(purchase_id: int) -> Purchase:
    return db.session.scalars(
        select(Purchase)
        .where(Purchase.id == purchase_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def _share(tokens: int, part_minor: int, whole_minor: int) -> int:
    """The tokens `part_minor` of `whole_minor` bought: ceil(tokens x part / whole)."""
    return -(-tokens * part_minor // whole_minor)


def _shares(purchase: Purchase, minor: int) -> tuple[int, int]:
    """The purchased and bonus tokens the first `minor` of the price bought (ceil)."""
    whole = purchase.amount_minor
    return _share(purchase.tokens, minor, whole), _share(purchase.bonus_tokens, minor, whole)


def _covered(purchase: Purchase) -> int:
    """How much of the price has had its tokens taken back: refunds and an open dispute."""
    return min(purchase.amount_minor, purchase.refunded_minor + purchase.disputed_minor)


def _take_back(purchase: Purchase, from_minor: int, to_minor: int, key: str) -> tuple[int, int]:
    """Take back the tokens the money from `from_minor` to `to_minor` bought; (taken, short).

    Purchased tokens go back to issuance and bonus tokens to promotions, as far
    as the student's available balance goes: a balance never goes negative.
    What could not be taken (already spent) is the shortfall.
    """
    tokens_to, bonus_to = _shares(purchase, to_minor)
    tokens_from, bonus_from = _shares(purchase, from_minor)
    due_tokens, due_bonus = tokens_to - tokens_from, bonus_to - bonus_from
    available = db.session.scalar(
        select(Wallet.available).where(Wallet.user_id == purchase.user_id)
    )
    tokens = min(due_tokens, available)
    bonus = min(due_bonus, available - tokens)
    _take(purchase, (tokens, bonus), key, f"Refund of purchase #{purchase.id}")
    return tokens + bonus, due_tokens + due_bonus - tokens - bonus


def _flag(user_id: int, reason: str) -> None:
    db.session.execute(
        update(User)
        .where(User.id == user_id)
        .values(flagged_at=clock.now(), flag_reason=reason[:255])
        .execution_options(synchronize_session=False)
    )


def _record(purchase: Purchase, to: PurchaseStatus, source: str, note: str, **values) -> None:
    now = clock.now()
    db.session.execute(
        update(Purchase)
        .where(Purchase.id == purchase.id)
        .values(status=to.value, version=Purchase.version + 1, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    db.session.add(
        PurchaseEvent(
            purchase_id=purchase.id,
            from_status=purchase.status,
            to_status=to.value,
            source=source,
            note=note[:255],
            at=now,
        )
    )


def refund(purchase_id: int, refunded_total_minor: int, source: str) -> Purchase:
    """Bring the purchase's refunded amount up to `refunded_total_minor` (a running total,
    as Stripe reports it), taking back the tokens that money bought. Idempotent: a
    total already reached changes nothing. Full refund: the purchase is `refunded`
    (or stays `disputed` while a dispute is open: its tokens are already taken, so a
    refund of the same money takes nothing more)."""

    def work():
        purchase = _locked(purchase_id)
        if purchase.status not in CREDITED:
            raise PurchaseRefused("Only a paid purchase can be refunded.")
        target = min(refunded_total_minor, purchase.amount_minor)
        if target <= purchase.refunded_minor:
            return
        total = money.amount(target, purchase.currency)
        before = _covered(purchase)
        after = min(purchase.amount_minor, target + purchase.disputed_minor)
        key = f"purchase:{purchase_id}:refund:{target}"
        taken, short = _take_back(purchase, before, after, key)
        if purchase.status == P.DISPUTED.value:
            status = P.DISPUTED
        else:
            status = P.REFUNDED if target == purchase.amount_minor else P.PAID
        note = f"refunded {total} in all; {taken} tokens taken back"
        if short:
            note += f", {short} already spent"
            _flag(
                purchase.user_id, f"Refund of purchase #{purchase_id}: {short} tokens already spent"
            )
        _record(
            purchase,
            status,
            source,
            note,
            refunded_minor=target,
            shortfall_tokens=purchase.shortfall_tokens + short,
        )
        notify(
            purchase.user_id,
            "purchase_refunded",
            f"Purchase #{purchase_id} was refunded ({total} in all); "
            f"{tokens(taken)} {'was' if taken == 1 else 'were'} taken back from your wallet.",
            link=f"/buy/purchases/{purchase_id}",
        )

    _retrying(work)
    return _fresh(purchase_id)


def dispute_opened(purchase_id: int, dispute_id: str, disputed_minor: int, source: str):
    """The buyer's bank disputes the payment: hold back the tokens it bought, once per dispute."""

    def work():
        purchase = _locked(purchase_id)
        if purchase.status not in (P.PAID.value, P.REFUNDED.value):
            return  # not credited, or a dispute already open
        amount = min(disputed_minor, purchase.amount_minor - purchase.refunded_minor)
        if amount <= 0:
            return
        start = _covered(purchase)
        key = f"purchase:{purchase_id}:dispute:{dispute_id}"
        taken, short = _take_back(purchase, start, start + amount, key)
        if short:
            _flag(purchase.user_id, f"Dispute on purchase #{purchase_id}: {short} tokens spent")
        _record(
            purchase,
            P.DISPUTED,
            source,
            f"disputed {money.amount(amount, purchase.currency)}; "
            f"{taken} tokens held back, {short} short",
            disputed_minor=amount,
            dispute_tokens=taken,
            shortfall_tokens=purchase.shortfall_tokens + short,
        )

    _retrying(work)
    return _fresh(purchase_id)


def dispute_closed(purchase_id: int, dispute_id: str, won: bool, source: str) -> Purchase:
    """The dispute is over. Won: the tokens held back for money not refunded meanwhile come
    back (purchased ones from issuance, bonus from promotions). Lost: they stay taken."""

    def work():
        purchase = _locked(purchase_id)
        if purchase.status != P.DISPUTED.value or not won:
            return
        refunded = min(purchase.amount_minor, purchase.refunded_minor)
        tokens_to, bonus_to = _shares(purchase, _covered(purchase))
        tokens_from, bonus_from = _shares(purchase, refunded)
        back_tokens = min(tokens_to - tokens_from, purchase.dispute_tokens)
        back_bonus = min(bonus_to - bonus_from, purchase.dispute_tokens - back_tokens)
        memo = f"Dispute on purchase #{purchase_id} won: tokens returned"
        _give(
            purchase,
            (back_tokens, back_bonus),
            f"purchase:{purchase_id}:dispute-won:{dispute_id}",
            kinds=(EntryKind.ADJUSTMENT, EntryKind.ADJUSTMENT),
            memos=(memo, memo),
        )
        back = P.REFUNDED if refunded == purchase.amount_minor else P.PAID
        _record(
            purchase,
            back,
            source,
            f"dispute won; {back_tokens + back_bonus} tokens returned",
            disputed_minor=0,
            dispute_tokens=0,
        )

    _retrying(work)
    return _fresh(purchase_id)


def _fresh(purchase_id: int) -> Purchase:
    return db.session.scalars(
        select(Purchase).where(Purchase.id == purchase_id).execution_options(populate_existing=True)
    ).one()


def _memo(purchase: Purchase) -> str:
    price = money.amount(purchase.amount_minor, purchase.currency)
    return f"Bought {purchase.tokens:,} tokens for {price} ({purchase.provider_label})"
