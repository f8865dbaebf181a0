"""Alembic environment for the daemon's database.

The daemon runs migrations in code (`triage_core.store.Store.upgrade`), handing over its open connection in
`config.attributes["connection"]`; the `alembic` command line (with alembic.ini at the repository root) passes
a URL instead: `sqlalchemy.url`, overridden by $TRIAGE_DATABASE_URL.
"""
from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from triage_core.store import Base, Store

config = context.config
target_metadata = Base.metadata
# Logging from alembic.ini only for the command line: the daemon keeps its own logging set-up.
if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = os.environ.get("TRIAGE_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: set sqlalchemy.url or TRIAGE_DATABASE_URL")
    return url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: later migrations get copy-and-move batch operations.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    """Print the SQL instead of running it (`alembic upgrade head --sql`)."""
    url = _url()
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=url.startswith("sqlite"), dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    # Through Store, so SQLite gets the same PRAGMAs and transaction handling as the daemon.
    store = Store(_url())
    try:
        with store.engine.connect() as conn:
            _configure(conn)
            conn.commit()
    finally:
        store.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
