"""A bounded fuzz run: mutated corpus messages through the parse stage and the whole pipeline.

Seeded (a failure replays with the same seed) and bounded in time; benchmarks/fuzz.py runs
the same generator for as long as one likes. No input may raise anything but ParseError from
the parse stage, or anything at all from the pipeline (which quarantines what it cannot
parse), and none may cost more than 2 s of CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories import CORPUS, ingest, make_ctx
from tests.fuzzing import corpus_messages, run

MESSAGES = corpus_messages(CORPUS)


@pytest.mark.slow
def test_parse_stage_fuzz() -> None:
    report = run(seed=20261130, messages=MESSAGES, count=3000, seconds=30)
    assert report.inputs >= 500, report.inputs
    assert not report.exceptions, report.exceptions[:3]
    assert report.max_cpu_s < 2.0, (report.max_cpu_s, report.slowest)


@pytest.mark.slow
def test_whole_pipeline_fuzz(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    statuses: dict[str, int] = {}

    def handle(data: bytes) -> None:
        outcome = ingest(ctx, data)
        statuses[outcome.status] = statuses.get(outcome.status, 0) + 1

    report = run(seed=11, messages=MESSAGES, count=1000, seconds=20, handle=handle)
    ctx.engine.dispose()
    assert report.inputs >= 100, report.inputs
    assert not report.exceptions, report.exceptions[:3]
    assert report.max_cpu_s < 2.0, (report.max_cpu_s, report.slowest)
    assert statuses.get("stored", 0) > report.inputs // 2, statuses
