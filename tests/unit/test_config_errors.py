"""`mailticket check-config`: each mistake an admin makes gets one clear line, and exit code 2.

Each line names the file, the section or rule, what is wrong and the fix. The
config is edited from a valid base the way an admin would edit it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailticket.cli import main
from mailticket.config import load_config
from mailticket.errors import ConfigError

VALID = """
[service]
data_dir = "{data}"
support_address = "support@example.com"

[[departments]]
name = "general"
address = "support@example.com"
agents = ["alice@example.com"]
sla = "standard"

[[departments]]
name = "support"
address = "help@example.com"
agents = ["alice@example.com"]

[[sla]]
name = "standard"
first_response = "8h"
resolution = "3d"

[[agents]]
email = "alice@example.com"
name = "Alice"

[[rules]]
name = "Urgent"
conditions = [{ field = "subject", op = "contains", value = "urgent" }]
actions = { priority = "urgent" }

[[rules]]
name = "Invoices to billing"
match = "any"
conditions = [
  { field = "subject", op = "contains", value = "invoice" },
  { field = "to", op = "equals", value = "billing@example.com" },
]
actions = { department = "support", priority = "high", tags = ["finance"] }
stop = true
"""


Check = Callable[..., tuple[Result, str]]


@pytest.fixture
def check(tmp_path: Path) -> Iterator[Check]:
    """check(edit) -> (result, path): run check-config on the valid base with `edit` applied."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    path = tmp_path / "mailticket.toml"

    def run(old: str = "", new: str = "", append: str = "") -> tuple[Result, str]:
        text = VALID.replace("{data}", str(tmp_path / "data"))
        if old:
            assert old in text, old
            text = text.replace(old, new, 1)
        path.write_text(text + append)
        return CliRunner().invoke(main, ["--config", str(path), "check-config"]), str(path)

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(result: Result) -> list[str]:
    """The problems without their line numbers (test_line_numbers checks those)."""
    assert result.exit_code == 2, result.output
    return [re.sub(r"^(.*?\.toml):\d+: ", r"\1: ", line) for line in result.stderr.strip().splitlines()]


def test_valid_config_exits_0(check: Check) -> None:
    result, path = check()
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{path}: valid (0 mailboxes, 2 departments, 1 agents, 2 rules)"


def test_typo_in_a_key(check: Check) -> None:
    result, path = check('actions = { priority = "urgent" }', 'actions = { priorty = "urgent" }')
    assert lines(result) == [
        f"{path}: rules[0] ('Urgent').actions: unknown key 'priorty' (did you mean 'priority'?)"
    ]


def test_typo_in_a_section_name(check: Check) -> None:
    result, path = check(append='\n[[rule]]\nname = "x"\n')
    assert lines(result) == [f"{path}: top level: unknown key 'rule' (did you mean 'rules'?)"]


def test_unknown_key_without_a_near_miss_lists_the_known_keys(check: Check) -> None:
    result, path = check('name = "Alice"', 'name = "Alice"\nphone = "123"')
    assert lines(result) == [
        f"{path}: agents[0] ('alice@example.com'): unknown key 'phone': remove it; known keys here: "
        "email, name, departments"
    ]


def test_unknown_department_in_a_rule(check: Check) -> None:
    result, path = check('actions = { department = "support"', 'actions = { department = "billing"')
    assert lines(result) == [
        f"{path}: rules[1] ('Invoices to billing').actions.department: unknown department 'billing'; "
        "known: general, support"
    ]


def test_unknown_department_in_an_agent(check: Check) -> None:
    result, path = check('name = "Alice"', 'name = "Alice"\ndepartments = ["suport"]')
    assert lines(result) == [
        f"{path}: agents[0] ('alice@example.com').departments[0]: unknown department 'suport' "
        "(did you mean 'support'?); known: general, support"
    ]


def test_unknown_department_in_a_mailbox(check: Check) -> None:
    mailbox = (
        '\n[[mailboxes]]\nname = "inbox"\nhost = "imap.example.com"\nusername = "u"\npassword = "p"\n'
        'department = "sales"\n'
    )
    result, path = check(append=mailbox)
    assert lines(result) == [
        f"{path}: mailboxes[0] ('inbox').department: unknown department 'sales'; known: general, support"
    ]


def test_unknown_field(check: Check) -> None:
    result, path = check('field = "subject", op = "contains", value = "urgent"',
                         'field = "subjet", op = "contains", value = "urgent"')
    assert lines(result) == [
        f"{path}: rules[0] ('Urgent').conditions[0].field: unknown field 'subjet' (did you mean 'subject'?): "
        "use one of from, from_domain, to, cc, recipient, subject, body, mailbox, has_attachment, "
        "attachment_name or 'header:<Name>'"
    ]


def test_unknown_op(check: Check) -> None:
    result, path = check('op = "equals"', 'op = "equal"')
    assert lines(result) == [
        f"{path}: rules[1] ('Invoices to billing').conditions[1].op: unknown op 'equal' (did you mean "
        "'equals'?): use one of equals, contains, starts_with, ends_with, regex, in, "
        "or not_<op> for the negation"
    ]


def test_duplicate_rule_name(check: Check) -> None:
    result, path = check('name = "Urgent"', 'name = "Invoices to billing"')
    assert lines(result) == [
        f"{path}: rules[1] ('Invoices to billing').name: rule name 'Invoices to billing' is already used by "
        "rules[0]; rename one of them"
    ]


def test_bad_regex(check: Check) -> None:
    result, path = check('op = "contains", value = "urgent"', "op = 'regex', value = 'URG-(\\d+'")
    assert lines(result) == [
        f"{path}: rules[0] ('Urgent').conditions[0]: bad regex 'URG-(\\d+': missing ) at "
        "position 8; fix the pattern (to match a literal '(' write '\\(')"
    ]


def test_bad_duration(check: Check) -> None:
    result, path = check('first_response = "8h"', 'first_response = "8hr"')
    assert lines(result) == [
        f"{path}: sla[0] ('standard').first_response: bad duration '8hr': write a number and a unit s, m, h, "
        "d or w, e.g. '8h' or '1d12h'"
    ]


def test_unknown_agent_in_a_department(check: Check) -> None:
    result, path = check('agents = ["alice@example.com"]\nsla',
                         'agents = ["alice@example.com", "Bob@example.com"]\nsla')
    assert lines(result) == [
        f"{path}: departments[0] ('general').agents[1]: 'Bob@example.com' is not a configured agent; "
        "add an [[agents]] table with email = 'Bob@example.com'"
    ]


def test_unknown_sla_and_assignee_in_a_rule(check: Check) -> None:
    result, path = check('actions = { priority = "urgent" }',
                         'actions = { priority = "urgent", sla = "gold", assign = "carol@example.com" }')
    assert lines(result) == [
        f"{path}: rules[0] ('Urgent').actions.sla: unknown sla 'gold'; known: standard",
        f"{path}: rules[0] ('Urgent').actions.assign: 'carol@example.com' is not a configured agent; use an "
        "[[agents]] email, 'round-robin' or 'least-open'",
    ]


def test_bad_priority_value(check: Check) -> None:
    result, path = check('actions = { priority = "urgent" }', 'actions = { priority = "critical" }')
    assert lines(result) == [
        f"{path}: rules[0] ('Urgent').actions.priority: must be one of 'low', 'normal', 'high', 'urgent' "
        "(got 'critical')"
    ]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('op = "contains", value = "urgent"', 'op = "in", value = "urgent"',
         "op 'in' needs a list value, e.g. value = ['a@x.com', 'b@x.com']"),
        ('op = "contains", value = "urgent"', 'op = "contains", value = ["a", "b"]',
         "op 'contains' needs a single value; use op 'in' for a list"),
        ('field = "subject", op = "contains", value = "urgent"', 'field = "has_attachment", value = "yes"',
         "has_attachment takes op 'equals' (or 'not_equals') and value = true or false"),
        ('op = "contains", value = "urgent"', 'op = "contains", value = true',
         "field 'subject' needs a text value, not true: quote it, value = 'true'"),
    ],
)
def test_condition_value_shapes(check: Check, old: str, new: str, message: str) -> None:
    result, path = check(old, new)
    assert lines(result) == [f"{path}: rules[0] ('Urgent').conditions[0]: {message}"]


def test_number_as_condition_value(check: Check) -> None:
    result, path = check('value = "urgent"', "value = 42")
    assert lines(result) == [
        f"{path}: rules[0] ('Urgent').conditions[0].value: value 42: write text in quotes "
        "(e.g. value = '42'), true/false for has_attachment, or a list of texts for op 'in'"
    ]


def test_drop_on_followups(check: Check) -> None:
    result, path = check('actions = { priority = "urgent" }', 'actions = { drop = true }\napplies_to = "all"')
    assert lines(result) == [
        f"{path}: rules[0] ('Urgent').actions.drop: drop only applies to new mail (a reply on a ticket is "
        "always kept): set applies_to = 'new' or remove drop"
    ]


def test_round_robin_without_agents(check: Check) -> None:
    result, path = check('address = "help@example.com"\nagents = ["alice@example.com"]',
                         'address = "help@example.com"\nassign = "round-robin"')
    assert lines(result) == [
        f"{path}: departments[1] ('support').assign: assign = 'round-robin' needs agents: list them in "
        "agents = [...] or set assign = 'none'"
    ]


def test_agents_own_departments_list_counts_for_assign(check: Check) -> None:
    result, _ = check('address = "help@example.com"\nagents = ["alice@example.com"]',
                      'address = "help@example.com"\nassign = "least-open"',
                      append='\n[[agents]]\nemail = "bob@example.com"\ndepartments = ["support"]\n')
    assert result.exit_code == 0, result.output


def test_duplicate_department_address(check: Check) -> None:
    result, path = check('address = "help@example.com"', 'address = "Support@example.com"')
    assert lines(result) == [
        f"{path}: departments[1] ('support').address: address 'support@example.com' is already used by "
        "departments[0]; give each department its own address"
    ]


def test_field_and_cross_reference_errors_in_one_run(tmp_path: Path) -> None:
    """A wrong field does not hide a name that points nowhere, and each is reported once."""
    path = tmp_path / "c.toml"
    text = VALID.replace("{data}", str(tmp_path / "data"))
    for old, new in (
        ('first_response = "8h"', 'first_response = "8hr"'),
        ('actions = { department = "support"', 'actions = { department = "billing"'),
        ('op = "equals"', 'op = "equal"'),
    ):
        text = text.replace(old, new)
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [p.split(": ", 1)[0] for p in caught.value.problems] == [
        "sla[0] ('standard').first_response",
        "rules[1] ('Invoices to billing').conditions[1].op",
        "rules[1] ('Invoices to billing').actions.department",
    ]
    assert caught.value.lines == [19, 34, 38]
    assert str(caught.value).splitlines()[2] == (
        f"{path}:38: rules[1] ('Invoices to billing').actions.department: unknown department 'billing'; "
        "known: general, support"
    )


def test_a_bad_field_is_not_reported_twice_as_a_bad_reference(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(VALID.replace("{data}", str(tmp_path)).replace(
        'agents = ["alice@example.com"]\nsla', 'agents = ["alice@"]\nsla'))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        "departments[0] ('general').agents[0]: 'alice@' is not an email address like name@example.com"
    ]


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPPORT_IMAP_PASSWORD", "x")
    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    assert load_config(example).rules[0].name == "Invoices to billing"


def test_line_numbers_point_at_the_key_or_its_table(tmp_path: Path) -> None:
    """Inline tables, [table] under an array of tables, [[array.of.tables]], dotted keys, strings."""
    path = tmp_path / "c.toml"
    path.write_text(
        '[service]\n'                                       # 1
        'support_address = "support@example.com"\n'         # 2
        'support_name = """Multi\nline = "not a key"\n"""\n'  # 3-5
        '[[rules]]\n'                                       # 6
        'name = "A"\n'                                      # 7
        'actions = { priorty = "high" }\n'                  # 8
        '[[rules]]\n'                                       # 9
        'name = "B"\n'                                      # 10
        '[[rules.conditions]]\n'                            # 11
        'field = "subject"\n'                               # 12
        'op = "contians"\n'                                 # 13
        'value = "x"\n'                                     # 14
        '[rules.actions]\n'                                 # 15
        'tags = [\n  "a",\n  "b",\n]\n'                   # 16-19
        'department = "salse"\n'                            # 20
        '[[rules]]\n'                                       # 21
        'conditions = [{ field = "subject", op = "equals", value = "y" }]\n'  # 22
        'tickets.reopen_within_days = "x"\n'                # 23: rules[2].tickets is unknown
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = zip(caught.value.problems, caught.value.lines, strict=True)
    found = [(p.split(": ")[0], line) for p, line in problems]
    assert sorted(found) == [
        ("rules[0] ('A').actions", 8),  # unknown key 'priorty'
        ("rules[1] ('B').actions.department", 20),
        ("rules[1] ('B').conditions[0].op", 13),
        ("rules[2]", 21),  # required key 'name' is missing
        ("rules[2]", 23),  # unknown key 'tickets'
    ]
    assert str(caught.value).splitlines()[0].startswith(f"{path}:8: rules[0] ('A').actions: unknown key")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('support_address = "support@example.com"', 'max_message_mb = "ten"',
         "service.max_message_mb: must be a number, without quotes (got 'ten')"),
        ('support_address = "support@example.com"', 'max_message_mb = 0',
         "service.max_message_mb: must be more than 0 (got 0)"),
        ('stop = true', 'stop = "maybe"',
         "rules[1] ('Invoices to billing').stop: must be true or false, without quotes (got 'maybe')"),
        ('match = "any"', 'match = "anyy"',
         "rules[1] ('Invoices to billing').match: must be one of 'all', 'any' (got 'anyy') "
         "(did you mean 'any'?)"),
        ('tags = ["finance"]', 'tags = "finance"',
         "rules[1] ('Invoices to billing').actions.tags: must be a list in brackets, e.g. [\"a\", \"b\"] "
         "(got 'finance')"),
        ('name = "Alice"', 'name = 7',
         "agents[0] ('alice@example.com').name: must be text in quotes (got 7)"),
    ],
)
def test_type_errors_in_admin_words(check: Check, old: str, new: str, message: str) -> None:
    result, path = check(old, new)
    assert lines(result) == [f"{path}: {message}"]


def test_did_you_mean_for_agents(check: Check) -> None:
    result, path = check('actions = { priority = "urgent" }', 'actions = { assign = "alice@exmaple.com" }')
    assert lines(result) == [
        f"{path}: rules[0] ('Urgent').actions.assign: 'alice@exmaple.com' is not a configured agent (did you "
        "mean 'alice@example.com'?); use an [[agents]] email, 'round-robin' or 'least-open'"
    ]
    result, path = check('actions = { priority = "urgent" }', 'actions = { assign = "round-robbin" }')
    assert "(did you mean 'round-robin'?)" in lines(result)[0]
    result, path = check('agents = ["alice@example.com"]\nsla', 'agents = ["alice@example.org"]\nsla')
    assert lines(result) == [
        f"{path}: departments[0] ('general').agents[0]: 'alice@example.org' is not a configured agent "
        "(did you mean 'alice@example.com'?); add an [[agents]] table with email = 'alice@example.org'"
    ]


def test_a_rule_naming_an_unknown_mailbox(check: Check) -> None:
    mailbox = '\n[[mailboxes]]\nname = "support"\nhost = "imap.example.com"\nusername = "u"\npassword = "p"\n'
    result, path = check('{ field = "to", op = "equals", value = "billing@example.com" }',
                         '{ field = "mailbox", op = "in", value = ["Support", "suport"] }', append=mailbox)
    assert lines(result) == [
        f"{path}: rules[1] ('Invoices to billing').conditions[1].value: unknown mailbox 'suport' "
        "(did you mean 'support'?); known: support"
    ]


def test_languages_bad_tags_and_missing_templates(check: Check, tmp_path: Path) -> None:
    result, path = check('name = "support"\n', 'name = "support"\nlanguage = "Deutsch!"\n')
    assert lines(result) == [
        f"{path}: departments[1] ('support').language: bad language 'Deutsch!': "
        "write a language tag like 'de' or 'pt-br'"
    ]
    result, path = check('actions = { priority = "urgent" }', 'actions = { language = "x" }')
    assert "rules[0] ('Urgent').actions.language: bad language 'x'" in lines(result)[0]
    # A language with only some files: valid, and check-config says what falls back to English.
    templates = tmp_path / "my-templates"
    (templates / "it").mkdir(parents=True)
    (templates / "it" / "ack.txt.j2").write_text("Ciao {{ greeting_name }}\n")
    result, path = check(
        'support_address = "support@example.com"\n',
        f'support_address = "support@example.com"\ntemplates_dir = "{templates}"\n',
    )
    out = result.stdout.splitlines()
    assert result.exit_code == 0, result.output
    assert out[0].startswith("templates it/: 29 missing, English used: ack.subject.j2, ack.html.j2, alert.")
    result, path = check('name = "support"\n', 'name = "support"\nlanguage = "pt-br"\n')
    assert "department support: no templates for language 'pt-br', English used" in result.stdout


@pytest.mark.parametrize(
    "key", ["customer_mail_per_ticket_per_hour", "agent_repeat_minutes", "alerts_per_sender_per_hour"]
)
def test_loop_brakes_take_whole_numbers_from_0(check: Check, key: str) -> None:
    result, _ = check(append=f"\n[tickets]\n{key} = 3\n")
    assert result.exit_code == 0, result.output
    result, path = check(append=f"\n[tickets]\n{key} = -1\n")
    (line,) = lines(result)
    assert line.startswith(f"{path}: tickets.{key}: "), line


def test_check_config_warns_of_a_catastrophic_rule_regex(check: Check) -> None:
    result, _ = check('op = "contains", value = "urgent"', "op = 'regex', value = '(\\w+\\s?)+$'")
    assert result.exit_code == 0, result.output  # bounded in time anyway: a warning, not an error
    assert result.stdout.splitlines()[0] == (
        "rules[0] ('Urgent').conditions[0]: regex '(\\w+\\s?)+$' can backtrack catastrophically (nested "
        "repetition): on such text a search gives up after 100 ms and the condition does not hold; write "
        "it without a repeated group that itself repeats"
    )
    result, _ = check('op = "contains", value = "urgent"', "op = 'not_regex', value = '(?i)\\burgent\\b'")
    assert result.exit_code == 0 and "backtrack" not in result.stdout
