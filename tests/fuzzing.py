"""Mutated corpus messages for the fuzz test and benchmarks/fuzz.py: seeded, so a failure replays.

Each input is a real corpus message changed in one of the ways an attacker would choose:
bytes flipped or MIME punctuation inserted, HTML nested deep (with end tags hidden where a
scanner might believe them), multiparts nested deep, many parts, a huge or repeated header,
RFC 2047 garbage in the subject, sender and a filename, overlong MIME parameters. `run`
parses (or ingests) each and records the largest CPU time one input took and any exception
other than ParseError.
"""

from __future__ import annotations

import base64
import functools
import random
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mailticket.errors import ParseError
from mailticket.pipeline.parse import parse

TAGS = ("div", "ul><li", "b", "p", "table><td", "span", "blockquote", "font", "a href=x", "ol><li")
NOISE = (b"", b"--", b"\r\n", b"=?", b"?=", b":", b"\x00", b"\xff", b"<", b"\r\n\r\n", b";", b'"', b"\\")


def corpus_messages(root: Path) -> list[bytes]:
    """The full messages of the corpus (the reply fixtures without headers left out)."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix not in (".json", ".md") and "expectations" not in path.parts:
            data = path.read_bytes()
            if b":" in data[:200] and len(data) < 2_000_000:
                found.append(data)
    return found


def _head_body(data: bytes) -> tuple[bytes, bytes]:
    at = data.find(b"\n\n")
    cut = data.find(b"\r\n\r\n")
    if cut >= 0 and (at < 0 or cut < at):
        return data[:cut], data[cut + 4 :]
    return (data, b"") if at < 0 else (data[:at], data[at + 2 :])


def _bytes(rng: random.Random, data: bytes) -> bytes:
    mutated = bytearray(data[:200_000])
    for _ in range(rng.randint(1, 40)):
        at = rng.randrange(len(mutated) or 1)
        mutated[at : at + rng.randint(0, 8)] = rng.choice(NOISE)
    return bytes(mutated)


def _deep_html(rng: random.Random, data: bytes) -> bytes:
    head, _ = _head_body(data)
    tag = rng.choice(TAGS)
    depth = rng.choice((50, 300, 5_000, 60_000))
    hide = rng.choice(("", f"<!--</{tag.split('>')[0]}>-->", "<script></div></script>", "</x>"))
    inner = (f"<{tag}>{hide}" * depth) + "text" + (f"</{tag.split()[0]}>" * rng.randint(0, depth))
    return head + b"\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + inner.encode()


# The shapes below depend only on a size drawn from a few; built once per size, they leave the
# generator's cost to the random parts (the same bytes for the same seed as building them anew).
@functools.cache
def _nested_multiparts(depth: int) -> bytes:
    return b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth)
    )


@functools.cache
def _numbered_parts(count: int) -> bytes:
    return b"".join(b"--B\r\nContent-Type: text/plain\r\n\r\n%d\r\n" % i for i in range(count))


@functools.cache
def _numbered_parameters(count: int) -> bytes:
    return b"; ".join(b"p%d*%d*=x" % (i % 7, i) for i in range(count))


def _deep_mime(rng: random.Random, data: bytes) -> bytes:
    head, body = _head_body(data)
    opening = _nested_multiparts(rng.choice((5, 20, 500, 20_000)))
    return head + b"\r\n" + opening + b"Content-Type: text/plain\r\n\r\n" + body[:5000]


def _many_parts(rng: random.Random, data: bytes) -> bytes:
    head, body = _head_body(data)
    parts = _numbered_parts(rng.choice((10, 2_000, 20_000)))
    return head + b'\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n' + parts + body[:1000]


def _huge_header(rng: random.Random, data: bytes) -> bytes:
    head, body = _head_body(data)
    line = rng.choice(
        (b"X-Junk: y\r\n", b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n", b"To: a@b.c,\r\n")
    )
    size = rng.choice((10_000, 200_000, 300_000))
    extra = line * (size // len(line)) if rng.random() < 0.5 else b"Subject: " + b"x" * size + b"\r\n"
    return head + b"\r\n" + extra + b"\r\n" + body


def _encoded_words(rng: random.Random, data: bytes) -> bytes:
    head, body = _head_body(data)
    junk = [
        b"=?utf-8?q?=41=?=",
        b"=?x?=?utf-8?b?==?=",
        b"=?utf-8?b?" + base64.b64encode(rng.randbytes(30)) + b"?=",
        b"=?iso-2022-jp?b?GyRCJDMkcyRLJEEkTxsoQg==?=",
        b"=?unknown*lang?Q?=FF=00?=",
    ]
    words = b" ".join(rng.choice(junk) for _ in range(rng.choice((5, 500, 10_000))))
    which = rng.choice((b"Subject: ", b"From: ", b"To: "))
    attachment = (
        b"\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=Z\r\n\r\n--Z\r\n"
        b'Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="'
        + words[:5000]
        + b'"\r\n\r\nAAAA\r\n--Z--\r\n'
    )
    return head + b"\r\n" + which + words + (attachment if rng.random() < 0.5 else b"\r\n\r\n" + body)


def _parameters(rng: random.Random, data: bytes) -> bytes:
    head, body = _head_body(data)
    params = _numbered_parameters(rng.choice((100, 20_000, 60_000)))
    return head + b"\r\nContent-Type: text/plain; " + params + b"\r\n\r\n" + body[:5000]


# Byte mutations are cheap and find parser exceptions; the shapes find the slow paths.
MUTATORS: tuple[Callable[[random.Random, bytes], bytes], ...] = (
    *(_bytes,) * 8,
    _deep_html,
    _deep_mime,
    _many_parts,
    _huge_header,
    _encoded_words,
    _parameters,
)


def mutants(seed: int, messages: list[bytes]) -> Iterator[tuple[str, bytes]]:
    """Endless (mutator name, mutated message), the same sequence for the same seed and corpus."""
    rng = random.Random(seed)
    while True:
        mutator = rng.choice(MUTATORS)
        yield mutator.__name__.lstrip("_"), mutator(rng, rng.choice(messages))


@dataclass
class Report:
    inputs: int = 0
    parse_errors: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    max_cpu_s: float = 0.0
    slowest: bytes = b""
    exceptions: list[str] = field(default_factory=list)
    mutators: dict[str, int] = field(default_factory=dict)  # inputs per mutator: all kept fuzzed

    def add(self, other: Report) -> None:
        """Fold another run's figures into this one (chunks of a long or parallel run)."""
        self.inputs += other.inputs
        self.parse_errors += other.parse_errors
        self.wall_s += other.wall_s
        self.cpu_s += other.cpu_s
        self.exceptions += other.exceptions
        for name, count in other.mutators.items():
            self.mutators[name] = self.mutators.get(name, 0) + count
        if other.max_cpu_s > self.max_cpu_s:
            self.max_cpu_s, self.slowest = other.max_cpu_s, other.slowest


def run(
    seed: int, messages: list[bytes], count: int, seconds: float, handle: Callable[[bytes], object] = parse
) -> Report:
    """Feed up to `count` mutants to `handle` for at most `seconds` of CPU; what failed, how slow.

    The budget is CPU time, so a busy machine changes how long a run takes, not what it tests.
    """
    report = Report()
    start, cpu_start = time.monotonic(), time.process_time()
    for name, data in mutants(seed, messages):
        if report.inputs >= count or time.process_time() - cpu_start > seconds:
            break
        report.inputs += 1
        report.mutators[name] = report.mutators.get(name, 0) + 1
        before = time.process_time()
        try:
            handle(data)
        except ParseError:
            report.parse_errors += 1
        except Exception:
            report.exceptions.append(f"{name}: " + traceback.format_exc(limit=3)[-600:])
        cpu = time.process_time() - before
        if cpu > report.max_cpu_s:
            report.max_cpu_s, report.slowest = cpu, data[:300]
    report.wall_s = time.monotonic() - start
    report.cpu_s = time.process_time() - cpu_start
    return report
