"""Single statements for hot paths, run on a pooled connection in autocommit.

A statement through the ORM session costs a BEGIN, the statement and a COMMIT
or ROLLBACK on PostgreSQL, and the session's bookkeeping in Python.
`autocommit_row` sends the statement alone, through the driver, on a
connection borrowed from the same pool: a transaction of its own. The ledger
writes its entries of their own this way; `read_one` reads this way (the
class timer). Errors come out as SQLAlchemy's; a connection goes back to the
pool out of autocommit or not at all.
"""

import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache

import psycopg
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.exc import DBAPIError

from soma.extensions import db


def autocommit_row(
    sql: str, params: dict, keep: Callable[[psycopg.Error], bool] | None = None
) -> tuple | None:
    """Run one statement (driver SQL) in autocommit on a pooled connection; its first row.

    A database error comes out as SQLAlchemy's DBAPIError, unless `keep(error)`
    says to raise it as it is. A lost connection makes the pool renew every
    connection made before it, as SQLAlchemy does. Any other interruption (a
    timeout's signal, say) leaves the connection's state unknown, so it is
    dropped. (After an error, a write may or may not have happened: a caller
    that wrote retries with the same idempotency key to find out.)
    """
    pooled = db.engine.raw_connection()
    driver = pooled.driver_connection
    try:
        driver.autocommit = True
        return _execute(driver, sql, params).fetchone()
    except psycopg.Error as error:
        if keep is not None and keep(error):
            raise
        lost = db.engine.dialect.is_disconnect(error, driver, None)
        if lost:
            # As SQLAlchemy does on a disconnect: drop this connection, and have
            # the pool renew every connection made before it (the server is gone
            # or was restarted, so they are all dead).
            db.engine.pool._invalidate(pooled, error)
        raise DBAPIError.instance(
            sql,
            params,
            error,
            psycopg.Error,
            hide_parameters=db.engine.hide_parameters,
            connection_invalidated=lost,
            dialect=db.engine.dialect,
        ) from error
    except BaseException:
        pooled.invalidate()
        raise
    finally:
        _back_out_of_autocommit(pooled, driver)
        pooled.close()


# psycopg caches its parsing of a statement's %(name)s placeholders only for
# statements up to this long (psycopg._queries.MAX_CACHED_STATEMENT_LENGTH).
_DRIVER_CACHES = 4096
_NAMED = re.compile(r"%%|%\((\w+)\)s")


def _execute(driver, sql: str, params: dict):
    """Execute on `driver`; a statement too long for psycopg to cache its parsing of is
    sent with positional placeholders ($1, ...), converted once here."""
    if len(sql) <= _DRIVER_CACHES:
        return driver.execute(sql, params)
    raw, names = _positional(sql)
    return psycopg.RawCursor(driver).execute(raw, [params[name] for name in names])


@cache
def _positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """`sql` with each %(name)s as $n (the same n for the same name), and the names in order
    (and each %% as the % it stands for)."""
    names: dict[str, int] = {}

    def number(match) -> str:
        if match.group(1) is None:
            return "%"
        return f"${names.setdefault(match.group(1), len(names) + 1)}"

    return _NAMED.sub(number, sql), tuple(names)


def _back_out_of_autocommit(pooled, driver) -> None:
    """Leave the connection fit for the session's transactions, or drop it from the pool."""
    if not pooled.is_valid:
        return
    try:
        idle = driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if idle:
            driver.autocommit = False
    except psycopg.Error:
        idle = False
    if not idle or driver.autocommit:
        pooled.invalidate()


@cache
def _compiled(statement) -> tuple[str, dict]:
    """The statement's SQL for the driver, and the values of its own constants."""
    compiled = statement.compile(dialect=PGDialect_psycopg())
    given = {name: None for name, bind in compiled.binds.items() if bind.required}
    constants = compiled.construct_params(given)
    return str(compiled), {k: v for k, v in constants.items() if k not in given}


def read_one(statement, params: dict) -> tuple | None:
    """The first row of `statement` (a Core select with named bind parameters), or None.

    On PostgreSQL, in autocommit (one round trip); elsewhere through the session.
    Only for reads that need no transaction.
    """
    if db.engine.dialect.name != "postgresql":
        return db.session.connection().execute(statement, params).first()
    sql, constants = _compiled(statement)
    row = autocommit_row(sql, {**constants, **params})
    if row is None:
        return None
    return tuple(v.astimezone(UTC) if isinstance(v, datetime) else v for v in row)
