"""Composition root: config -> engine (migrated) -> blobs, templates, secret -> AppContext."""

from __future__ import annotations

from sqlalchemy import Engine

from mailticket.config import Config
from mailticket.context import AppContext, load_secret
from mailticket.outbound.render import Renderer
from mailticket.storage.blobs import Blobs, BlobStore, DatabaseBlobStore
from mailticket.storage.db import make_engine, migrate


def build(config: Config) -> AppContext:
    renderer = Renderer(config.service.templates_dir)
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
