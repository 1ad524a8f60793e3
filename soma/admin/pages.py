"""Every page of the operator's console: importing this registers them all on `bp`."""

from soma.admin import (  # noqa: F401  (each registers its routes)
    action_log,
    alert_pages,
    audit_runs,
    health,
    metrics,
    packages,
    pricing,
    routes,
    users,
)
from soma.admin.blueprint import bp

__all__ = ["bp"]
