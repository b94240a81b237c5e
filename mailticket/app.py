"""Composition root: config -> engine (migrated) -> blobs, templates, secret -> AppContext."""

from __future__ import annotations

from mailticket.config import Config
from mailticket.context import AppContext, load_secret
from mailticket.outbound.render import Renderer
from mailticket.storage.blobs import BlobStore
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
        blobs=BlobStore(data_dir / "blobs"),
        renderer=renderer,
        secret=load_secret(config),
    )
