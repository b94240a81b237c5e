"""Templates: every kind renders, HTML escapes customer text, mistakes stop the start with file and line."""

from __future__ import annotations

from email import message_from_bytes, policy
from pathlib import Path

import pytest

from mailticket.errors import ConfigError
from mailticket.outbound.render import DEFAULT_TEMPLATES, KIND_VARIABLES, KINDS, PARTS, VARIABLES, Renderer
from tests.factories import ingest, mail, make_ctx

ISSUE_KINDS = ("ack", "alert", "reply", "note_alert", "resolution", "reopened", "overdue")


def _context(kind: str, **entry: str) -> dict[str, object]:
    return {**VARIABLES, **KIND_VARIABLES.get(kind, {}), "entry": {**VARIABLES["entry"], **entry}}


def test_every_shipped_language_has_every_kind_in_subject_text_and_html() -> None:
    assert set(ISSUE_KINDS) <= set(KINDS)
    assert {"en", "de", "fr", "es"} <= Renderer().languages
    for language in ("en", "de", "fr", "es"):
        for kind in KINDS:
            for part in PARTS:
                name = f"{language}/{kind}.{part}.j2"
                assert (DEFAULT_TEMPLATES / name).is_file(), name
    assert Renderer().missing() == []


@pytest.mark.parametrize("kind", KINDS)
def test_kind_renders_with_documented_variables(kind: str) -> None:
    rendered = Renderer().render(kind, _context(kind))
    assert "[#ABCD-EFGH]" in rendered.subject
    assert "\n" not in rendered.subject
    assert rendered.text.strip()
    assert rendered.html is not None and rendered.html.strip()


def test_default_templates_pass_the_startup_check() -> None:
    Renderer().check()


@pytest.mark.parametrize("kind", ["ack", "alert", "reply", "note_alert", "resolution"])
def test_html_autoescapes_customer_text_and_text_part_keeps_it(kind: str) -> None:
    body = 'Hi <script>alert("x")</script> & <a href="http://evil">click</a>'
    rendered = Renderer().render(kind, _context(kind, body=body))
    assert rendered.html is not None
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;" in rendered.html
    assert '<a href="http://evil">' not in rendered.html
    assert body in rendered.text


def test_subject_cannot_carry_a_header() -> None:
    context = _context("ack")
    context["ticket"] = {**VARIABLES["ticket"], "subject": "Hi\r\nBcc: evil@example.net\x00\tthere"}
    subject = Renderer().render("ack", context).subject
    assert subject == "Re: Hi Bcc: evil@example.net there [#ABCD-EFGH]"


def test_templates_dir_overrides_single_files(tmp_path: Path) -> None:
    (tmp_path / "ack.txt.j2").write_text("Custom ack for {{ ticket.ref }}\n")
    renderer = Renderer(tmp_path)
    renderer.check()
    assert renderer.render("ack", _context("ack")).text == "Custom ack for ABCD-EFGH\n"
    assert "New ticket" in renderer.render("alert", _context("alert")).text  # the shipped default


def test_syntax_error_is_a_config_error_naming_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "ack.txt.j2").write_text("Hello\n\nYour ref: {{ ticket.ref }\nBye\n")
    with pytest.raises(ConfigError) as caught:
        Renderer(tmp_path).check()
    message = str(caught.value)
    assert f"{tmp_path / 'ack.txt.j2'}, line 3" in message


def test_unknown_variable_is_a_config_error_naming_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "alert.html.j2").write_text("<p>ok</p>\n<p>{{ tiket.ref }}</p>\n")
    with pytest.raises(ConfigError) as caught:
        Renderer(tmp_path).check()
    message = str(caught.value)
    assert f"{tmp_path / 'alert.html.j2'}, line 2" in message
    assert "'tiket' is undefined (did you mean 'ticket'?)" in message


def test_misspelt_field_and_template_name_get_a_did_you_mean(tmp_path: Path) -> None:
    (tmp_path / "ack.txt.j2").write_text("Your ref: {{ ticket.refs }}\n")
    (tmp_path / "ack.subjct.j2").write_text("Re: {{ ticket.subject }}\n")
    (tmp_path / "footer.j2").write_text("-- \n{{ support_name }}\n")  # a partial: not a typo
    with pytest.raises(ConfigError) as caught:
        Renderer(tmp_path).check()
    assert caught.value.problems == [
        "template ack.subjct.j2 is not one mailticket uses (did you mean 'ack.subject.j2'?): name it "
        "<kind>.<subject|txt|html>.j2 with a kind of ack, alert, reply, note_alert, resolution, reopened, "
        "overdue, closed_reject, command_error, unverified_agent",
    ]
    (tmp_path / "ack.subjct.j2").unlink()
    with pytest.raises(ConfigError) as caught:
        Renderer(tmp_path).check()
    assert "has no attribute 'refs' (did you mean 'ref'?)" in caught.value.problems[0]


def test_app_build_refuses_a_broken_templates_dir(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "reply.subject.j2").write_text("Re: {{ ticket.subject }")
    with pytest.raises(ConfigError, match=r"reply\.subject\.j2, line 1"):
        make_ctx(tmp_path, service={"templates_dir": str(templates)})


def test_missing_templates_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        Renderer(tmp_path / "nowhere").check()


def test_outbound_html_part_of_a_real_notice_is_escaped(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    ingest(ctx, mail(subject="<b>Bold</b> & co", body="<script>steal()</script>\n"))
    from sqlmodel import Session, select

    from mailticket.outbound.send import flush
    from mailticket.storage.tables import OutboxMessage

    flush(ctx)  # notices are rendered by the sender (file transport)

    with Session(ctx.engine) as session:
        ack = session.exec(select(OutboxMessage).where(OutboxMessage.kind == "ack")).one()
    msg = message_from_bytes(ack.raw, policy=policy.default)
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "<script>" not in html and "&lt;script&gt;steal()&lt;/script&gt;" in html
    assert "<script>steal()</script>" in text
    assert msg["Subject"] == f"Re: <b>Bold</b> & co [#{ack.subject.split('[#')[1]}"
