"""One status palette: every status word maps to one of five tones, shown as a badge.

The badge always carries its words; the tone only adds colour, so nothing is told by
colour alone. Templates call the `badge` macro (templates/partials/_badge.html), which
asks `status_tone` here; a status not listed is neutral.
"""

TONES = ("success", "danger", "warning", "info", "neutral")

STATUS_TONES = {
    # Done, and as it should be.
    "paid": "success",
    "completed": "success",
    "passed": "success",
    "ready": "success",
    "succeeded": "success",
    "won": "success",
    "handled": "success",
    "in_force": "success",
    # Gone wrong, or needs someone to act.
    "failed": "danger",
    "rejected": "danger",
    "aborted": "danger",
    "error": "danger",
    "abandoned": "danger",
    "disputed": "danger",
    "lost": "danger",
    "frozen": "danger",
    "flagged": "danger",
    # Waiting on someone or something.
    "requested": "warning",
    "pending": "warning",
    "processing": "warning",
    "paused": "warning",
    "open": "warning",
    "new": "warning",
    "retry": "warning",
    "not_ready": "warning",
    # Under way, or to come.
    "scheduled": "info",
    "queued": "info",
    "running": "info",
    "in_progress": "info",
    "default": "info",
    # Over, with nothing left to do.
    "cancelled": "neutral",
    "ended_early": "neutral",
    "expired": "neutral",
    "refunded": "neutral",
    "retired": "neutral",
    "acknowledged": "neutral",
    "ignored": "neutral",
    "past": "neutral",
}


def status_tone(status) -> str:
    """The tone of `status` (a status word or enum member); neutral when unknown."""
    return STATUS_TONES.get(str(status or "").strip().lower(), "neutral")


def status_words(status) -> str:
    """A status word as a reader sees it when no label is given: "in_progress" -> "In progress"."""
    words = str(status or "").replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def register(app) -> None:
    """Give templates `status_tone` and `status_words`."""
    app.add_template_global(status_tone, "status_tone")
    app.add_template_global(status_words, "status_words")
