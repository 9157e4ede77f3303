"""The README says what the code does: its settings and its error codes cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

from broker import errors
from broker.settings import PREFIX, Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n## ", start + len(title))
    return README[start : end if end > 0 else None]


def error_codes() -> set[str]:
    codes, todo = set(), [errors.NdxpError]
    while todo:
        cls = todo.pop()
        codes.add(cls.code)
        todo.extend(cls.__subclasses__())
    return codes


def test_every_setting_is_documented_and_every_documented_one_exists() -> None:
    text = section("## Configuration")
    documented = {n for n in re.findall(r"`([A-Z][A-Z0-9_]+)`", text) if not n.endswith("_")}
    known = {name.removeprefix(PREFIX) for name in Settings.env_names()}
    assert known - documented == set(), (
        f"settings the README's Configuration omits: {sorted(known - documented)}"
    )
    assert documented - known == set(), (
        f"the README documents settings that do not exist: {documented - known}"
    )


def test_every_error_code_is_documented() -> None:
    text = section("### Endpoints and errors")
    documented = set(re.findall(r"`([a-z_]+)`", text))
    missing = error_codes() - documented
    assert not missing, f"error codes the README's error list omits: {sorted(missing)}"
