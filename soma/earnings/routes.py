"""The teacher's earnings dashboard."""

from flask import Blueprint, current_app, render_template
from flask_login import current_user
from sqlalchemy.exc import SQLAlchemyError

from soma.earnings import chart, service
from soma.models import Role
from soma.security import role_required

bp = Blueprint("earnings", __name__)


@bp.get("/earnings")
@role_required(Role.TEACHER)
def index():
    """Balances, this month against last, lifetime, and twelve months as a chart and a table."""
    earnings = service.earnings_of(current_user)
    page = render_template(
        "earnings/index.html", earnings=earnings, chart=chart.bar_chart(earnings.months)
    )
    if earnings.checkpoint_due:
        # The next view reads less; this one is already right. A failure here loses
        # nothing (the sums are a cache of the ledger), so the page is still served.
        try:
            # Not behind a sweeper's catch-up of the same teacher: that one does the work.
            service.advance_checkpoint(earnings.wallet_id, wait=False)
        except SQLAlchemyError:
            current_app.logger.exception("earnings: the checkpoint could not move on")
    return page
