"""What a second busy core adds on this machine: the parse stage alone, then on both cores.

`benchmarks/scale.py` asks two daemons for 1.5x one daemon's rate on 2 cores. That needs the
second core to add at least half of what the first does when both are busy, which a virtual
machine's cores need not (they may share a physical core, its cache or its memory bandwidth
with each other or with other guests). This measures it with mailticket's own CPU-bound work:
N generated messages (the generator of benchmarks/ingest.py) parsed by `pipeline.parse` in one
process, then the same in two processes at once, alternating for `--rounds` rounds. Run it
from the repository root on an otherwise idle machine:

    python3 benchmarks/cores.py [--n 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import generate  # noqa: E402
from mailticket.pipeline.parse import parse  # noqa: E402

MAX_BYTES = 50 * 1024 * 1024


def parse_all(mails: list[bytes]) -> float:
    """Seconds of wall time to parse every message once (after a short warm-up)."""
    for raw in mails[:50]:
        parse(raw, max_bytes=MAX_BYTES)
    started = time.perf_counter()
    for raw in mails:
        parse(raw, max_bytes=MAX_BYTES)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="messages (default 2000)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    mails = list(generate(args.n, 1))
    gains = []
    with get_context("spawn").Pool(2) as pool:
        for round_ in range(1, args.rounds + 1):
            alone = pool.apply(parse_all, (mails,))
            both = pool.map(parse_all, [mails, mails], chunksize=1)
            # Messages per second: one process alone, against two processes side by side.
            gain = (2 * args.n / max(both)) / (args.n / alone)
            gains.append(gain)
            print(f"round {round_}: alone {alone * 1000 / args.n:.2f} ms a message; side by side "
                  f"{', '.join(f'{s * 1000 / args.n:.2f}' for s in both)} ms; two cores = {gain:.2f}x one",
                  flush=True)
    print(f"two busy cores = {statistics.median(gains):.2f}x one (median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
