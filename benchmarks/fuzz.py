"""Long fuzz runs: the test suite's generator (tests/fuzzing.py) for as many inputs as asked.

The run is cut into chunks of --chunk inputs; chunk k is the generator's sequence for seed
`seed * 1_000_003 + k`, whichever process runs it, so `--jobs 4` tests exactly the inputs of
a serial run, and `--from-chunk K` continues a run that was stopped after K chunks. After
each chunk (in chunk order) one JSON line gives the figures so far: inputs, inputs per second
of wall time and per second of CPU, the largest CPU time one input took, ParseErrors
(expected: refused input), other exceptions (a bug; the first ones are printed with their
seed) and the inputs per mutator. The slowest input is written to --slowest. Run from the
repository root, nice'd on a shared machine (CPU time per input does not depend on load):

    nice -n 19 python3 benchmarks/fuzz.py [--n 1000000] [--jobs 2] [--seed 1] [--pipeline] [--hours 8]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailticket.pipeline.parse import parse
from tests.factories import CORPUS, ingest, make_ctx
from tests.fuzzing import Report, corpus_messages, run

_worker: tuple[list[bytes], Callable[[bytes], object]] | None = None


def _start_worker(pipeline: bool) -> None:
    """Each process reads the corpus once and, for --pipeline, ingests into its own SQLite desk."""
    global _worker
    logging.getLogger("mailparser").setLevel(logging.CRITICAL)  # it logs every odd header
    handle: Callable[[bytes], object] = parse
    if pipeline:
        ctx = make_ctx(Path(tempfile.mkdtemp(prefix="mailticket-fuzz-")))
        handle = lambda data: ingest(ctx, data)  # noqa: E731
    _worker = (corpus_messages(CORPUS), handle)


def _chunk(job: tuple[int, int, int, float]) -> tuple[int, Report]:
    """One chunk's report; an empty one once the run's deadline has passed."""
    seed, chunk, size, deadline = job
    if time.time() > deadline:
        return chunk, Report()
    assert _worker is not None
    messages, handle = _worker
    report = run(seed * 1_000_003 + chunk, messages, size, float("inf"), handle)
    report.exceptions = [f"seed {seed} chunk {chunk}: {e}" for e in report.exceptions]
    return chunk, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="inputs in all, --from-chunk's included")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=2_000)
    parser.add_argument("--from-chunk", type=int, default=0, help="skip the chunks a stopped run did")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--hours", type=float, default=24.0, help="wall-time budget: no chunk starts after")
    parser.add_argument("--pipeline", action="store_true", help="ingest into a SQLite desk, not just parse")
    parser.add_argument("--slowest", type=Path, default=Path("fuzz-slowest.eml"))
    args = parser.parse_args()
    deadline = time.time() + args.hours * 3600
    chunks = range(args.from_chunk, -(-args.n // args.chunk))
    jobs = [(args.seed, k, min(args.chunk, args.n - k * args.chunk), deadline) for k in chunks]
    total = Report()
    start = time.monotonic()
    with multiprocessing.Pool(args.jobs, _start_worker, (args.pipeline,)) as pool:
        for chunk, report in pool.imap(_chunk, jobs):
            if not report.inputs:
                break
            total.add(report)
            figures = {
                "chunks": [args.from_chunk, chunk + 1],
                "inputs": total.inputs,
                "wall_s": round(time.monotonic() - start),
                "per_s": round(total.inputs / (time.monotonic() - start), 1),
                "per_cpu_s": round(total.inputs / total.cpu_s, 1),
                "max_cpu_s": round(total.max_cpu_s, 3),
                "parse_errors": total.parse_errors,
                "exceptions": len(total.exceptions),
                "mutators": dict(sorted(total.mutators.items())),
            }
            print(json.dumps(figures), flush=True)
        pool.terminate()
    args.slowest.write_bytes(total.slowest)
    for exc in total.exceptions[:5]:
        print(exc, file=sys.stderr)
    sys.exit(1 if total.exceptions else 0)


if __name__ == "__main__":
    main()
