"""Long fuzz runs: the test suite's generator (tests/fuzzing.py) for as many inputs as asked.

Prints inputs per second, the largest CPU time one input took, ParseErrors (expected: refused
input) and any other exception (a bug; the first ones are printed with their seed). The
slowest input is written to --slowest for a closer look. Run from the repository root, on
one core and nice'd on a shared machine:

    nice python3 benchmarks/fuzz.py [--n 1000000] [--seed 1] [--pipeline] [--hours 8]

Each --chunk inputs (default 10,000) print one progress line, so a long run can be watched.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.factories import CORPUS, ingest, make_ctx
from tests.fuzzing import Report, corpus_messages, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--hours", type=float, default=24.0, help="CPU-time budget")
    parser.add_argument("--pipeline", action="store_true", help="ingest into a SQLite desk, not just parse")
    parser.add_argument("--slowest", type=Path, default=Path("fuzz-slowest.eml"))
    args = parser.parse_args()
    logging.getLogger("mailparser").setLevel(logging.CRITICAL)  # it logs every odd header
    messages = corpus_messages(CORPUS)
    handle = None
    if args.pipeline:
        ctx = make_ctx(Path(tempfile.mkdtemp(prefix="mailticket-fuzz-")))
        handle = lambda data: ingest(ctx, data)  # noqa: E731
    total = Report()
    chunk = 0
    budget = args.hours * 3600
    while total.inputs < args.n and total.wall_s < budget:
        size = min(args.chunk, args.n - total.inputs)
        report = run(args.seed * 1_000_003 + chunk, messages, size, budget, *([handle] if handle else []))
        chunk += 1
        total.inputs += report.inputs
        total.parse_errors += report.parse_errors
        total.wall_s += report.wall_s
        total.exceptions += [f"seed {args.seed} chunk {chunk - 1}: {e}" for e in report.exceptions]
        if report.max_cpu_s > total.max_cpu_s:
            total.max_cpu_s, total.slowest = report.max_cpu_s, report.slowest
        print(
            json.dumps(
                {
                    "inputs": total.inputs,
                    "per_s": round(total.inputs / total.wall_s, 1),
                    "max_cpu_s": round(total.max_cpu_s, 3),
                    "parse_errors": total.parse_errors,
                    "exceptions": len(total.exceptions),
                }
            ),
            flush=True,
        )
    args.slowest.write_bytes(total.slowest)
    for exc in total.exceptions[:5]:
        print(exc, file=sys.stderr)
    sys.exit(1 if total.exceptions else 0)


if __name__ == "__main__":
    main()
