"""Composition root: config -> engine (migrated) -> blobs, templates, secret -> AppContext."""

from __future__ import annotations

from sqlalchemy import Engine

from mailticket.config import Config
from mailticket.context import AppContext, load_secret
from mailticket.outbound.render import Renderer
from mailticket.storage.blobs import Blobs, BlobStore, DatabaseBlobStore
from mailticket.storage.db import make_engine, migrate


def build(config: Config, *, sends: bool = True) -> AppContext:
    """`sends`: this process renders notices, so every template is checked first (a mistake
    stops the start). Commands that only store or read (an MTA's `ingest`, `tickets`,
    `status`) never render and skip the check, a quarter of a second of CPU: the sender
    that renders their notices checked the templates when it started."""
    renderer = Renderer(config.service.templates_dir)
    if sends:
        renderer.check()
    engine = make_engine(config.service.db_url)
    migrate(engine)
    data_dir = config.service.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    return AppContext(
        config=config,
        engine=engine,
        blobs=blob_store(config, engine),
        renderer=renderer,
        secret=load_secret(config),
    )


def blob_store(config: Config, engine: Engine) -> Blobs:
    """The configured blob store: files under data_dir (default), or the PostgreSQL database."""
    if config.service.blob_store == "postgres":
        return DatabaseBlobStore(engine)
    return BlobStore(config.service.data_dir / "blobs")
