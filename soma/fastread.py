"""One-row reads for hot paths, run on a pooled connection in autocommit.

A read of one row through the ORM session costs a BEGIN, the SELECT and a
ROLLBACK on PostgreSQL, and the session's bookkeeping in Python. `read_one`
sends the SELECT alone, through the driver, on a connection borrowed from the
same pool (compiled once per statement). On other databases it reads through
the session. Use it only for reads that need no transaction and write nothing.
"""

from datetime import UTC, datetime
from functools import cache

from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

from soma.extensions import db


@cache
def _compiled(statement) -> tuple[str, dict]:
    """The statement's SQL for the driver, and the values of its own constants."""
    compiled = statement.compile(dialect=PGDialect_psycopg())
    given = {name: None for name, bind in compiled.binds.items() if bind.required}
    constants = compiled.construct_params(given)
    return str(compiled), {k: v for k, v in constants.items() if k not in given}


def read_one(statement, params: dict) -> tuple | None:
    """The first row of `statement` (a Core select with named bind parameters), or None."""
    if db.engine.dialect.name != "postgresql":
        return db.session.connection().execute(statement, params).first()
    pooled = db.engine.raw_connection()
    try:
        driver = pooled.driver_connection
        driver.autocommit = True
        try:
            sql, constants = _compiled(statement)
            row = driver.execute(sql, {**constants, **params}).fetchone()
        finally:
            if not driver.closed:
                driver.autocommit = False
    except BaseException:
        pooled.invalidate()  # its state is unknown: never reuse it
        raise
    finally:
        pooled.close()
    if row is None:
        return None
    return tuple(v.astimezone(UTC) if isinstance(v, datetime) else v for v in row)
