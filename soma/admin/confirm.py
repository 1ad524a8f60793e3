"""Every admin POST has a confirmation step.

An admin form posts once: the route validates it and, unless it carries
`confirmed=yes`, answers with `confirmation(...)`, a page that says what will happen
and posts the same fields again with `confirmed=yes`. Only that second POST acts.
"""

from flask import render_template, request

CONFIRMED = "confirmed"


def confirmed() -> bool:
    """Whether this POST is the confirmation of a form the admin has already seen."""
    return request.form.get(CONFIRMED) == "yes"


def confirmation(
    title: str,
    facts: list[tuple[str, str]],
    button: str,
    cancel_url: str,
    warning: str | None = None,
    settle: dict[str, str] | None = None,
):
    """The page that asks the admin to confirm this POST (its fields are posted again).

    `settle` replaces fields with what the page showed (a blank refund amount becomes
    the amount quoted), so the confirmed POST acts on exactly what the admin read.
    """
    settle = settle or {}
    fields = [
        (name, value)
        for name, value in request.form.items(multi=True)
        if name not in {"csrf_token", CONFIRMED, *settle}
    ] + list(settle.items())
    return render_template(
        "admin/confirm.html",
        title=title,
        facts=facts,
        fields=fields,
        action=request.path,
        button=button,
        cancel_url=cancel_url,
        warning=warning,
    )
