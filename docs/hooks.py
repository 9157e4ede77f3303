"""MkDocs hook: pages show generated content, never a copy that can drift.

- ``<!-- figures: NAME.json -->``: the table of ``docs/NAME.json``, written
  by the benchmark or fault script (``loadtests/figures.py``);
- ``<!-- settings -->``: the table of every ``NDXP_*`` setting, from
  ``broker/settings.py``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from broker.settings import markdown as settings_markdown
from loadtests.figures import table

DOCS = Path(__file__).resolve().parent
_FIGURES = re.compile(r"<!-- figures: ([\w.-]+\.json) -->")


def on_page_markdown(markdown: str, **_: Any) -> str:
    markdown = _FIGURES.sub(lambda m: table(DOCS / m.group(1)), markdown)
    if "<!-- settings -->" in markdown:
        generated = settings_markdown()
        markdown = markdown.replace("<!-- settings -->", generated[generated.index("| variable") :])
    return markdown
