"""The repository's docs stand on their own: no document cites the product spec, which
users do not have, and the design document they point to exists with its sections."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_no_document_cites_the_spec() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in DOCS
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bSPEC\b|shared/SPEC|\.\./shared", line)
    ]
    assert not offenders, "\n".join(offenders)


def test_design_doc_has_the_sections_others_link_to() -> None:
    design = (ROOT / "docs" / "design.md").read_text()
    for heading in (
        "## Principles, and why",
        "## How problems are detected",
        "## What lockscope sees, and what it does not",
        "## The public contract, and what stays compatible",
        "## Architecture: the data flow and where each step lives",
    ):
        assert heading in design, heading


def test_the_module_map_names_files_that_exist() -> None:
    design = (ROOT / "docs" / "design.md").read_text()
    table = design.split("## Architecture", 1)[1]
    src = ROOT / "src" / "lockscope"
    for row in table.splitlines():
        if not row.startswith("| ") or row.startswith(("| step", "|---")):
            continue
        where = row.split("|")[2]
        folder = src
        for token in re.findall(r"`([\w/.<>-]+)`", where):
            if "<" in token:  # a pattern such as instrumentation/<library>.py: its folder
                folder = src / token.rsplit("/", 1)[0]
                continue
            if not token.endswith((".py", "/")):
                continue
            name = token.removeprefix("src/lockscope/").rstrip("/")
            path = src / name if "/" in name or token.startswith("src/") else folder / name
            assert path.exists(), f"{path} in: {row}"
            if "/" in name or token.startswith("src/"):
                folder = path if path.is_dir() else path.parent
