"""The provider layer: one inbox for every event, and an import graph without a circle."""

import ast
import json
from pathlib import Path

from sqlalchemy import select

from soma.extensions import db
from soma.models import ProviderEvent
from tests.conftest import STRIPE_WEBHOOK_SECRET
from tests.fakes.stripe_server import event, signed

ROOT = Path(__file__).resolve().parents[2] / "soma"


def soma_modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The soma modules `name` imports, at any depth of its code."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    found.add(f"{base}.{alias.name}")
                elif base in modules:
                    found.add(base)
    found.discard(name)
    return found


def test_no_module_imports_itself_through_a_circle():
    modules = soma_modules()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    circles = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            # A package's __init__ importing its own modules is how it exports them.
            if target.startswith(name + "."):
                continue
            if state.get(target) == "open":
                circles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_providers_import_no_domain():
    modules = soma_modules()
    domains = ("soma.purchases", "soma.classes", "soma.gifts", "soma.wallet", "soma.admin",
               "soma.ledger", "soma.withdrawals", "soma.payouts", "soma.earnings")  # fmt: skip
    for name, path in modules.items():
        if name.startswith("soma.providers"):
            assert not [m for m in imports_of(name, path, modules) if m.startswith(domains)], name


def post_raw(client, payload):
    body, header = signed(payload, STRIPE_WEBHOOK_SECRET)
    return client.post(
        "/webhooks/stripe",
        data=body,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )


def test_an_event_is_kept_once_with_its_raw_body_and_why_it_was_ignored(app, client, stripe_on):
    payload = event("customer.created", {"id": "cus_1", "object": "customer"})
    first, again = post_raw(client, payload), post_raw(client, payload)
    assert first.status_code == again.status_code == 200
    assert again.get_json()["duplicate"] is True
    with app.app_context():
        (kept,) = db.session.scalars(select(ProviderEvent)).all()
        assert (kept.provider, kept.event_id, kept.kind, kept.status) == (
            "stripe",
            payload["id"],
            "customer.created",
            "ignored",
        )
        assert kept.note == "customer.created: nothing to do"
        assert json.loads(kept.body) == payload


def test_a_signed_event_soma_cannot_read_is_refused_with_400_and_kept_as_malformed(
    app, client, stripe_on
):
    too_long = "evt_" + "9" * 300
    for payload in ({}, {"id": "evt_1"}, {"id": "evt_2", "type": "x"},
                    {"id": "evt_3", "type": "x", "data": {}},
                    {"id": "evt_4", "type": "x", "data": {"object": "text"}},
                    {"id": too_long, "type": "x", "data": {"object": {"id": "o"}}}):  # fmt: skip
        response = post_raw(client, payload)
        assert response.status_code == 400, payload
    with app.app_context():
        kept = db.session.scalars(select(ProviderEvent)).all()
        assert len(kept) == 6  # each under its body's digest, never the id it claims
        assert {(event.kind, event.status) for event in kept} == {("malformed", "ignored")}
        assert all(event.event_id.startswith("malformed:") for event in kept)
