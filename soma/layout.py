"""What the site's layout shows on every page: the viewer's own token rate in the footer."""

from flask import g
from flask_login import current_user
from sqlalchemy.exc import SQLAlchemyError

from soma.ledger.pricing import PricingMissing, get_token_pricing
from soma.models import PricingUserType, User
from soma.money import tokens, usd


def rate_text(pricing) -> str:
    """A pricing row as the footer reads it: "10 tokens = $1.00"."""
    return f"{tokens(pricing.tokens)} = {usd(pricing.usd_cents)}"


def footer_rates() -> list[str]:
    """The rates the viewer lives by, from the pricing in force, read once a request:
    a student (or a visitor) the price of tokens, a teacher what they are worth when
    withdrawn, an admin both. Empty when no pricing can be read (a page about a broken
    database still renders)."""
    if "footer_rates" in g:
        return g.footer_rates
    user = current_user._get_current_object() if current_user.is_authenticated else None
    if user is not None and not isinstance(user, User):
        # A session not yet read (SessionUser: the timer's poll, say) has no role to go by.
        g.footer_rates = []
        return g.footer_rates
    kinds = []
    if user is None or user.is_student or user.is_admin:
        kinds.append(PricingUserType.STUDENT)
    if user is not None and (user.is_teacher or user.is_admin):
        kinds.append(PricingUserType.TEACHER)
    lines = []
    try:
        for kind in kinds:
            text = rate_text(get_token_pricing(kind))
            if user is not None and user.is_admin:
                lines.append(f"{kind}s: {text}")
            elif kind == PricingUserType.TEACHER:
                lines.append(f"{text} when you withdraw")
            else:
                lines.append(text)
    except (PricingMissing, SQLAlchemyError):
        lines = []
    g.footer_rates = lines
    return lines


def register(app) -> None:
    """Give templates `footer_rates()`, read only when the footer asks."""
    app.add_template_global(footer_rates, "footer_rates")
