"""The README and the documentation site say what the code does, and build strictly.

The README stays short and starts with the two commands a newcomer runs; the
site (MkDocs Material) builds with ``--strict``; its configuration page is
generated from the settings and its error list covers every error code; no
link in the repository points outside it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker import errors
from broker.settings import PREFIX, Settings, markdown

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def error_codes() -> set[str]:
    codes, todo = set(), [errors.NdxpError]
    while todo:
        cls = todo.pop()
        codes.add(cls.code)
        todo.extend(cls.__subclasses__())
    return codes


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).parent / "mkdocs"
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = README.splitlines()
    assert len(lines) <= 200, f"the README has {len(lines)} lines; keep it under 200 (the rest is the site)"
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    assert blocks[0].split()[:2] == ["scripts/ndxp", "up"], blocks[0]
    assert blocks[1].split()[:1] == ["scripts/test"], blocks[1]


def test_the_site_builds_strictly_and_lists_every_setting(site: Path) -> None:
    page = (site / "configuration" / "index.html").read_text()
    shown = set(re.findall(r"\bNDXP_[A-Z0-9_]+\b", page))
    known = {name for name in Settings.env_names() if name.startswith(PREFIX)}
    assert known - shown == set(), f"settings the configuration page omits: {sorted(known - shown)}"
    assert shown - known == set(), f"the configuration page names settings that do not exist: {shown - known}"


def test_the_configuration_table_has_a_row_per_setting_with_its_help() -> None:
    rows = [line for line in markdown().splitlines() if line.startswith("| `NDXP_")]
    assert len(rows) == len({n for n in Settings.env_names() if n.startswith(PREFIX)})
    assert all(not row.endswith("|  |") for row in rows), "a setting without help"


def test_the_benchmark_pages_show_the_scripts_figures(site: Path) -> None:
    page = (site / "benchmarks" / "index.html").read_text()
    assert "<!-- figures" not in page
    assert "SIGKILL the counter" in page  # from docs/faults.json
    assert "counted = answered" in page  # the bench.json table's header


def test_every_error_code_is_documented() -> None:
    api = (ROOT / "docs" / "api.md").read_text()
    start = api.index("## Endpoints and errors")
    end = api.find("\n## ", start + 1)
    documented = set(re.findall(r"`([a-z_]+)`", api[start : end if end > 0 else None]))
    missing = error_codes() - documented
    assert not missing, f"error codes the API guide's error list omits: {sorted(missing)}"


def _markdown_files() -> list[Path]:
    skip = {".venv", ".git", "site", "node_modules"}
    return [p for p in ROOT.rglob("*.md") if not skip & set(p.relative_to(ROOT).parts)]


def test_no_link_in_the_repository_points_outside_it() -> None:
    bad = []
    for path in _markdown_files():
        for target in _LINK.findall(path.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor
            resolved = (path.parent / target.split("#")[0]).resolve()
            if not resolved.is_relative_to(ROOT):
                bad.append(f"{path.relative_to(ROOT)}: {target} (outside the repository)")
            elif not resolved.exists():
                bad.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
    text = "\n".join(p.read_text() for p in _markdown_files())
    assert "shared/DESIGN" not in text, "a page refers to a file outside the repository"
    assert bad == []


def test_the_link_check_finds_a_link_outside(tmp_path: Path) -> None:
    """The check above can fail: a link that climbs out of its root is found."""
    page = tmp_path / "docs" / "a.md"
    page.parent.mkdir()
    page.write_text("see [design](../../shared/DESIGN.md)")
    target = _LINK.findall(page.read_text())[0]
    assert not (page.parent / target).resolve().is_relative_to(tmp_path)
