"""The rules engine: admin-written conditions and actions, evaluated in file order.

Pure: no I/O. Each `RuleConfig` is compiled once into a `CompiledRule` (a name,
small condition objects with their test prepared, the actions); the compiled
tuple is cached per rules list, so a message never pays for compilation. A
message's field values are read lazily and once (`_Facts`), case-folded once
for the case-insensitive ops; only `regex` sees the original text.

`evaluate` (the pipeline's fast path) and `trace` (`mailticket rules test`)
are the same loop, `_run`; the trace only asks it to record every condition.

Regex conditions run on the `regex` module, which takes a timeout: mail decides the text and
a pattern may backtrack catastrophically on it, so each search is bounded in time as well as
in length. A search that times out makes its condition not hold for that message and is
returned as a RuleTimeoutError on the Decision, for the caller to log and record.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from operator import methodcaller

from mailticket.config import ActionsConfig, ConditionConfig, RuleConfig
from mailticket.config.schema import RULE_REGEX_TIMEOUT_MS
from mailticket.errors import RuleTimeoutError
from mailticket.models import Decision, ParsedMessage, RuleHit

# A condition's check gets the message's facts and returns what it matched on, or None.
Check = Callable[["_Facts"], str | None]

_SHOWN = 60  # characters of a matched value quoted in "matched on"
# Characters of one value a regex condition reads. Mail decides the text, the admin the
# pattern: `invoice.*overdue` is quadratic on a body of "invoice" repeated, so the scan is
# bounded (what a sender wrote sits at the top of the body; the other ops read it whole).
MAX_REGEX_CHARS = 64 * 1024


def _q(text: str) -> str:
    """Quote as the admin would write it: no backslash doubling (regexes stay readable)."""
    return f'"{text}"' if "'" in text else f"'{text}'"


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return _q(text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…")


def _describe(cond: ConditionConfig) -> str:
    value = cond.value
    if isinstance(value, bool):
        shown = str(value).lower()
    elif isinstance(value, list):
        shown = "[" + ", ".join(_q(v) for v in value) + "]"
    else:
        shown = _q(value)
    return f"{cond.field} {cond.op} {shown}"


def _predicate(cond: ConditionConfig) -> tuple[Callable[[str], object], str | None]:
    """(a C-level test of one value, the case-folded needle of a contains op); not for regex.

    Bound methods and methodcaller keep the per-value test out of Python code:
    evaluating 200 rules stays well under a millisecond.
    """
    base = cond.op.removeprefix("not_")
    value = cond.value
    if base == "in":
        return frozenset(str(v).casefold() for v in value).__contains__, None  # type: ignore[union-attr]
    needle = str(value).lower() if isinstance(value, bool) else str(value).casefold()
    if base == "contains":
        return methodcaller("__contains__", needle), needle
    if base == "starts_with":
        return methodcaller("startswith", needle), None
    if base == "ends_with":
        return methodcaller("endswith", needle), None
    return needle.__eq__, None


def _check(cond: ConditionConfig, text: str, rule: str) -> Check:
    """One closure per condition: read the field's values, test each, say what matched."""
    if cond.op.endswith("regex"):
        return _regex_check(cond, text, rule)
    field = cond.field
    negate = cond.op.startswith("not_")
    show = cond.op not in ("equals", "not_equals")  # an equals match is the value itself
    test, needle = _predicate(cond)

    def shown(original: str, folded: str) -> str:
        if not show:
            return text
        if needle is not None and len(original) > _SHOWN and len(original) == len(folded):
            # A long value (the body) is quoted around the match, not from its start.
            start = max(0, folded.find(needle) - 20)
            original = original[start : start + _SHOWN]
        return f"{text}: {_quote(original)}"

    def check(facts: _Facts) -> str | None:
        for pair in facts[field]:
            hit = test(pair[1])
            if hit:
                return None if negate else shown(pair[0], pair[1])
        return text if negate else None

    return check


def _regex_check(cond: ConditionConfig, text: str, rule: str) -> Check:
    """A regex condition: the original (not case-folded) text, searched within length and time bounds.

    On a timeout the condition does not hold, negated or not (what the pattern would have said
    is unknown), and the facts keep a RuleTimeoutError for the Decision.
    """
    assert cond.pattern is not None  # compiled by the config validator, at load
    search = cond.pattern.search
    field = cond.field
    negate = cond.op.startswith("not_")

    def check(facts: _Facts) -> str | None:
        seconds = facts.regex_timeout_ms / 1000
        for original, _ in facts[field]:
            try:
                hit = search(original, 0, MAX_REGEX_CHARS, timeout=seconds)
            except TimeoutError:
                facts.rule_errors.append(RuleTimeoutError(rule, field, text, facts.regex_timeout_ms))
                return None
            if hit:
                return None if negate else f"{text}: {_quote(hit.group(0))}"
        return text if negate else None

    return check


@dataclass(frozen=True, slots=True)
class Condition:
    text: str  # "subject contains 'invoice'": how the admin wrote it
    check: Check  # what it matched on, or None when it does not hold


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    match_any: bool
    conditions: tuple[Condition, ...]
    actions: ActionsConfig
    stop: bool
    on_new: bool
    on_followups: bool
    applies_to: str
    single: Check | None  # the check of a one-condition rule


def compile_rule(rule: RuleConfig) -> CompiledRule:
    conditions = []
    for cond in rule.conditions:
        text = _describe(cond)
        conditions.append(Condition(text, _check(cond, text, rule.name)))
    return CompiledRule(
        name=rule.name,
        match_any=rule.match == "any",
        conditions=tuple(conditions),
        actions=rule.actions,
        stop=rule.stop,
        on_new=rule.applies_to in ("new", "all"),
        on_followups=rule.applies_to in ("followups", "all"),
        applies_to=rule.applies_to,
        single=conditions[0].check if len(conditions) == 1 else None,
    )


_CACHE_SIZE = 8
_cache: OrderedDict[int, tuple[Sequence[RuleConfig], tuple[CompiledRule, ...]]] = OrderedDict()
_cache_lock = threading.Lock()


def compiled(rules: Sequence[RuleConfig]) -> tuple[CompiledRule, ...]:
    """The compiled form of a config's rules list, built once per list object.

    Keyed by identity (config models hold lists, so they are not hashable, and
    hashing 200 rules per message would cost more than evaluating them); the
    entry keeps the list alive, so an id is never reused while cached. A few
    entries cover a reload's old and new config.
    """
    with _cache_lock:
        hit = _cache.get(id(rules))
        if hit is not None and hit[0] is rules:
            _cache.move_to_end(id(rules))
            return hit[1]
    result = tuple(compile_rule(r) for r in rules)
    with _cache_lock:
        _cache[id(rules)] = (rules, result)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return result


class _Facts(dict[str, tuple[tuple[str, str], ...]]):
    """field -> its (value, case-folded value) pairs in one message, read on first use and kept.

    A dict, so a known field costs one C-level lookup for every rule after the first.
    """

    def __init__(self, msg: ParsedMessage, mailbox: str | None, regex_timeout_ms: int) -> None:
        super().__init__()
        self.msg = msg
        self.mailbox = mailbox
        self.regex_timeout_ms = regex_timeout_ms
        self.rule_errors: list[RuleTimeoutError] = []

    def __missing__(self, field: str) -> tuple[tuple[str, str], ...]:
        found = self[field] = tuple((v, v.casefold()) for v in self._read(field))
        return found

    def _read(self, field: str) -> tuple[str, ...]:
        msg = self.msg
        if field == "from":
            return (msg.sender,) if msg.sender else ()
        if field == "from_domain":
            return (msg.sender.rsplit("@", 1)[1],) if msg.sender and "@" in msg.sender else ()
        if field == "to":
            return tuple(a.email for a in msg.to)
        if field == "cc":
            return tuple(a.email for a in msg.cc)
        if field == "recipient":
            return tuple(dict.fromkeys([*(a.email for a in (*msg.to, *msg.cc)), *msg.delivered_to]))
        if field == "subject":
            return (msg.subject,)
        if field == "body":
            return (msg.text,)
        if field == "mailbox":
            return (self.mailbox,) if self.mailbox else ()
        if field == "has_attachment":
            return ("true" if _attachment_names(msg) is not None else "false",)
        if field == "attachment_name":
            return tuple(n for n in (_attachment_names(msg) or ()) if n)
        return tuple(msg.header_all(field.removeprefix("header:")))


def _attachment_names(msg: ParsedMessage) -> list[str | None] | None:
    """Filenames of the real attachments, None without any.

    Images the HTML shows inline by Content-ID (logos, signatures) are not
    attachments to an admin; an inline photo sent from a phone is.
    """
    names = [a.filename for a in msg.attachments if not (a.inline and a.content_id)]
    return names or None


@dataclass(frozen=True)
class RuleTrace:
    """One rule's fate for one message, as `rules test` shows it."""

    rule: str
    result: str  # matched | no match | skipped
    matched_on: tuple[str, ...] = ()
    conditions: tuple[tuple[str, bool], ...] = ()  # every condition and whether it held
    reason: str = ""  # why skipped


_ALWAYS = ("always (no conditions)",)


def _match(rule: CompiledRule, facts: _Facts, results: list[bool] | None) -> tuple[str, ...] | None:
    """What the rule matched on, or None; every condition's result is appended to `results` if given.

    "all" stops at the first condition that fails unless results are recorded; "any"
    always checks every condition, so its matched-on is the same in both modes.
    """
    conditions = rule.conditions
    if not conditions:
        return _ALWAYS
    held: list[str] = []
    for cond in conditions:
        on = cond.check(facts)
        if results is not None:
            results.append(on is not None)
        if on is not None:
            held.append(on)
        elif not rule.match_any and results is None:
            return None
    if rule.match_any or len(held) == len(conditions):
        return tuple(held) or None
    return None


def _run(
    rules: Sequence[RuleConfig],
    msg: ParsedMessage,
    base: Decision,
    mailbox: str | None,
    followup: bool,
    traces: list[RuleTrace] | None,
    regex_timeout_ms: int,
) -> Decision:
    facts = _Facts(msg, mailbox, regex_timeout_ms)
    decision = base
    hits: list[RuleHit] = []
    stopped_by: str | None = None
    for rule in compiled(rules):
        if stopped_by is not None:
            if traces is None:
                break
            traces.append(
                RuleTrace(rule.name, "skipped", reason=f"not reached: {stopped_by!r} stopped the run")
            )
            continue
        if not _applies(rule, followup, traces):
            continue
        matched_on = _rule_match(rule, facts, traces)
        if matched_on is None:
            continue
        hits.append(RuleHit(rule.name, matched_on))
        decision = _apply(decision, rule.actions)
        if rule.stop or rule.actions.drop:  # a dropped message has nothing left to decide
            stopped_by = rule.name
    if facts.rule_errors:
        return replace(decision, hits=tuple(hits), rule_errors=tuple(facts.rule_errors))
    return replace(decision, hits=tuple(hits)) if hits else base


def _applies(rule: CompiledRule, followup: bool, traces: list[RuleTrace] | None) -> bool:
    """Whether `rule` is for this kind of mail (new ticket or follow-up); a trace says why not."""
    if rule.on_followups if followup else rule.on_new:
        return True
    if traces is not None:
        kind = "replies on existing tickets" if followup else "new tickets"
        why = f"applies_to = {rule.applies_to!r}: not for {kind}"
        traces.append(RuleTrace(rule.name, "skipped", reason=why))
    return False


def _rule_match(rule: CompiledRule, facts: _Facts, traces: list[RuleTrace] | None) -> tuple[str, ...] | None:
    """What the rule matched on, or None; with `traces`, every condition's result is recorded."""
    results: list[bool] | None = None if traces is None else []
    matched_on: tuple[str, ...] | None
    if rule.single is not None and results is None:  # the common case without a call to _match
        on = rule.single(facts)
        matched_on = None if on is None else (on,)
    else:
        matched_on = _match(rule, facts, results)
    if traces is not None:
        texts = tuple(zip((c.text for c in rule.conditions), results or (), strict=True))
        traces.append(RuleTrace(rule.name, "matched" if matched_on else "no match", matched_on or (), texts))
    return matched_on


def _apply(decision: Decision, act: ActionsConfig) -> Decision:
    """A matching rule's actions on the decision so far: set values win, tags accumulate."""
    return replace(
        decision,
        department=act.department or decision.department,
        priority=act.priority or decision.priority,
        assign=act.assign or decision.assign,
        status=act.status or decision.status,
        sla=act.sla or decision.sla,
        language=act.language or decision.language,
        acknowledge=decision.acknowledge if act.acknowledge is None else act.acknowledge,
        tags=(*decision.tags, *(t for t in dict.fromkeys(act.tags) if t not in decision.tags)),
        drop=decision.drop or act.drop,
    )


def evaluate(
    rules: Sequence[RuleConfig],
    msg: ParsedMessage,
    base: Decision,
    *,
    mailbox: str | None,
    followup: bool,
    regex_timeout_ms: int = RULE_REGEX_TIMEOUT_MS,
) -> Decision:
    """Apply the rules that match, in file order, to `base`; hits name each rule and what it matched."""
    return _run(rules, msg, base, mailbox, followup, None, regex_timeout_ms)


def trace(
    rules: Sequence[RuleConfig],
    msg: ParsedMessage,
    base: Decision,
    *,
    mailbox: str | None,
    followup: bool,
    regex_timeout_ms: int = RULE_REGEX_TIMEOUT_MS,
) -> tuple[Decision, tuple[RuleTrace, ...]]:
    """The same decision as `evaluate`, plus every rule's result and every condition's."""
    traces: list[RuleTrace] = []
    decision = _run(rules, msg, base, mailbox, followup, traces, regex_timeout_ms)
    return decision, tuple(traces)
