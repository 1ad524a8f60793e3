"""The wallet page, the transaction history (htmx filters, keyset pages) and CSV export."""

import csv
import io
from datetime import UTC, date, datetime, time, timedelta

from flask import Blueprint, Response, render_template, request, stream_with_context, url_for
from flask_login import current_user

from soma.models import Role
from soma.security import role_required
from soma.wallet import history, service
from soma.wallet.forms import HistoryFilterForm

bp = Blueprint("wallet", __name__, url_prefix="/wallet")

RECENT = 10
CSV_INJECTION_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# The statement's columns: `change` is what came in (+) or left (-) the wallet, 0 for a
# move between available and locked (a hold, a release); `usd_value` is the dollar value
# of that change, signed, and empty for a move and for bonus or promotional tokens.
CSV_COLUMNS = [
    "date",
    "entry_id",
    "type",
    "description",
    "change",
    "available_change",
    "locked_change",
    "usd_value",
    "available_after",
    "locked_after",
    "reference",
]


def _wants_fragment() -> bool:
    """An htmx swap gets the table alone; a history restore needs the whole page."""
    return bool(request.headers.get("HX-Request")) and not request.headers.get(
        "HX-History-Restore-Request"
    )


def _filters(form: HistoryFilterForm) -> dict:
    """The history query's filters from the form; dates are whole UTC days.

    A filter the form refuses is dropped and the others still apply; a bad date
    range drops both dates.
    """
    form.validate()
    dates_ok = not form.start.errors and not form.end.errors
    start = form.start.data if dates_ok else None
    end = form.end.data if dates_ok else None
    return {
        "kind": (form.kind.data or None) if not form.kind.errors else None,
        "start": datetime.combine(start, time.min, UTC) if start else None,
        "end": datetime.combine(end + timedelta(days=1), time.min, UTC)
        if end and end < date.max
        else None,
    }


def _filter_args(form: HistoryFilterForm) -> dict:
    """The filters as URL arguments, for the next-page link and the CSV link."""
    args = {}
    if form.kind.data and not form.kind.errors:
        args["kind"] = form.kind.data
    if form.start.data and not (form.start.errors or form.end.errors):
        args["start"] = form.start.data.isoformat()
    if form.end.data and not (form.start.errors or form.end.errors):
        args["end"] = form.end.data.isoformat()
    return args


@bp.get("/")
@role_required(Role.STUDENT, Role.TEACHER)
def index():
    """Available, locked and total tokens, their value, and the last transactions."""
    summary = service.wallet_summary(current_user)
    recent = history.history_page(summary.wallet_id, limit=RECENT)
    return render_template(
        "wallet/index.html",
        summary=summary,
        rows=recent.rows,
        has_more=recent.next_cursor is not None,
        rate_type=service.pricing_type(current_user),
    )


@bp.get("/history")
@role_required(Role.STUDENT, Role.TEACHER)
def transactions():
    """Every entry of the user's wallet, newest first, filtered, a keyset page at a time."""
    form = HistoryFilterForm(request.args)
    wallet = service.wallet_of(current_user.id)
    cursor = history.Cursor.decode(request.args.get("cursor"))
    page = history.history_page(wallet.id, cursor=cursor, **_filters(form))
    args = _filter_args(form)
    context = {
        "form": form,
        "page": page,
        "rows": page.rows,
        "is_first_page": cursor is None,
        "first_url": url_for("wallet.transactions", **args),
        "next_url": url_for("wallet.transactions", cursor=page.next_cursor.encode(), **args)
        if page.next_cursor
        else None,
        "csv_url": url_for("wallet.export_csv", **args),
        "rate_type": service.pricing_type(current_user),
    }
    template = "wallet/_history.html" if _wants_fragment() else "wallet/history.html"
    response = Response(render_template(template, **context))
    response.vary.add("HX-Request")
    return response


def _csv_text(value: str) -> str:
    """Neutralise a text cell a spreadsheet would run as a formula."""
    return "'" + value if value.startswith(CSV_INJECTION_PREFIXES) else value


def _cents_text(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


@bp.get("/history.csv")
@role_required(Role.STUDENT, Role.TEACHER)
def export_csv():
    """The filtered history as CSV, streamed a keyset batch at a time.

    Dates are UTC with their offset (2026-03-01T09:00:00+00:00), so a spreadsheet
    in any time zone reads the same moment."""
    form = HistoryFilterForm(request.args)
    filters = _filters(form)
    wallet_id = service.wallet_of(current_user.id).id
    rate_type = service.pricing_type(current_user)

    def rows():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        for row in history.iter_history(wallet_id, **filters):
            usd_change = row.usd_change(rate_type)
            writer.writerow(
                [
                    row.created_at.astimezone(UTC).isoformat(timespec="seconds"),
                    row.entry_id,
                    row.label,
                    _csv_text(row.description),
                    row.change,
                    row.available_change,
                    row.locked_change,
                    "" if usd_change is None else _cents_text(usd_change),
                    row.available_after,
                    row.locked_after,
                    row.reference,
                ]
            )
            if buffer.tell() > 16_384:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    filename = f"soma-history-{datetime.now(UTC):%Y%m%d}.csv"
    return Response(
        stream_with_context(rows()),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
