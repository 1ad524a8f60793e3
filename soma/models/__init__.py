"""All models, imported here so that Alembic and the app see every table."""

from soma.models.base import Base, UTCDateTime, utcnow
from soma.models.user import SIGNUP_ROLES, Role, User

__all__ = ["SIGNUP_ROLES", "Base", "Role", "UTCDateTime", "User", "utcnow"]
