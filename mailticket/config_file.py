"""The config file before validation: where it is, its TOML, ${VAR} expansion, relative paths.

Light on purpose (tomllib, no pydantic): `ingest --detach` finds the data folder with
`data_dir()` in a few milliseconds, and `config.load` builds the validated Config on the same
functions, so both read the same file, expand the same variables and anchor the same folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from mailticket import CONFIG_ENV
from mailticket.errors import ConfigError

Loc = tuple[int | str, ...]
Problem = tuple[Loc, str, Loc]  # (what the line names, the message, the key whose line it is on)

DEFAULT_DATA_DIR = Path("./data")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def locate(path: str | Path | None) -> Path:
    """The config file: --config, else $MAILTICKET_CONFIG, else ./mailticket.toml."""
    return Path(path or os.environ.get(CONFIG_ENV) or "mailticket.toml")


def read(location: Path, text: str | None = None) -> tuple[str, dict[str, Any]]:
    """The file's text (or `text`) and its TOML; a missing, unreadable or invalid file is a ConfigError."""
    try:
        source = text if text is not None else location.read_text(encoding="utf-8")
        return source, tomllib.loads(source)
    except FileNotFoundError:
        raise ConfigError(
            str(location), ["file not found (pass --config or set MAILTICKET_CONFIG)"]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(location), [f"not valid TOML: {exc}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(location), [f"cannot read: {exc}"]) from None


def expand_env(node: Any, loc: Loc, problems: list[Problem]) -> Any:
    """Replace ${VAR} in every string; a missing variable is a problem, not an empty string."""
    if isinstance(node, dict):
        return {k: expand_env(v, (*loc, k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, (*loc, i), problems) for i, v in enumerate(node)]
    if isinstance(node, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                fix = f"export {name}=... before starting mailticket"
                problems.append((loc, f"environment variable {name} is not set ({fix})", loc))
                return ""
            return os.environ[name]

        return _ENV_REF.sub(sub, node)
    return node


def anchor(base: Path, path: Path) -> Path:
    """A path of the config taken from the config file's folder `base`, never from the current
    directory (an MTA pipe runs in its queue folder, cron in a home folder); an absolute path
    stays as it is."""
    return base.resolve() / path


def data_dir(path: str | Path | None) -> Path:
    """`[service] data_dir` of the config file, read without validating the rest of it."""
    location = locate(path)
    raw = read(location)[1]
    service = raw.get("service", {})
    value = service.get("data_dir", str(DEFAULT_DATA_DIR)) if isinstance(service, dict) else None
    if not isinstance(value, str):
        raise ConfigError(str(location), ["service.data_dir: must be a folder's path (a string)"])
    problems: list[Problem] = []
    value = expand_env(value, ("service", "data_dir"), problems)
    if problems:
        raise ConfigError(str(location), [f"service.data_dir: {message}" for _, message, _ in problems])
    return anchor(location.parent, Path(value))
