"""Accounts: one role per user."""

import enum
from datetime import datetime

from flask_login import UserMixin
from sqlalchemy import Boolean, CheckConstraint, Index, Integer, String, text, true
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from soma.models.base import Base, UTCDateTime, utcnow


class Role(enum.StrEnum):
    STUDENT = "student"
    TEACHER = "teacher"
    ADMIN = "admin"


SIGNUP_ROLES = (Role.STUDENT, Role.TEACHER)
# Users who are not students (ix_users_staff's predicate, repeated as a literal by its
# queries: a partial index serves only a WHERE that says the same).
STAFF = "role <> 'student'"


class User(UserMixin, Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role IN ('student', 'teacher', 'admin')", name="role_known"),
        CheckConstraint("email = lower(email)", name="email_lowercase"),
        # The operator's search (soma.admin.users): a substring of the email or the name,
        # through trigrams (pg_trgm, migration 0018). PostgreSQL only; SQLite scans.
        Index(
            "ix_users_email_trgm", text("lower(email) gin_trgm_ops"), postgresql_using="gin"
        ).ddl_if(dialect="postgresql"),
        Index(
            "ix_users_display_name_trgm",
            text("lower(display_name) gin_trgm_ops"),
            postgresql_using="gin",
        ).ddl_if(dialect="postgresql"),
        # The operator's metrics (soma.admin.metrics) count and sum the staff (teachers
        # and admins, a few percent of the users) through it; students are the rest.
        Index(
            "ix_users_staff",
            "role",
            postgresql_where=text(STAFF),
            sqlite_where=text(STAFF),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    display_name: Mapped[str] = mapped_column(String(80))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Set when the account needs an admin's look: a refund or dispute took back
    # tokens that were already spent (see soma.purchases.service).
    flagged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    flag_reason: Mapped[str | None] = mapped_column(String(255))
    # Copied into the session at log-in and checked on every request: raising it
    # ends every session made before (soma.auth.service.end_sessions).
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Set by an admin (soma.admin.users): a frozen account cannot buy, gift, book, start a
    # class or withdraw; what is already under way (a class, a payment) still finishes.
    frozen_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    frozen_reason: Mapped[str | None] = mapped_column(String(300))
    # An IANA name (soma.timezones): every page shows times in it, and a booking's local
    # date and time are read in it. Guessed from the browser at sign-up.
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    # Whether the in-app notifications also go by email (set at /account).
    email_notifications: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())

    wallet = relationship("Wallet", back_populates="user", uselist=False)

    def set_password(self, password: str) -> None:
        """Store a salted hash of `password`; the password itself is never kept."""
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        """Return whether `password` matches the stored hash."""
        return check_password_hash(self.password_hash, password)

    @property
    def is_student(self) -> bool:
        return self.role == Role.STUDENT

    @property
    def is_teacher(self) -> bool:
        return self.role == Role.TEACHER

    @property
    def is_frozen(self) -> bool:
        return self.frozen_at is not None

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def __repr__(self) -> str:
        return f"<User {self.id} {self.email} {self.role}>"
