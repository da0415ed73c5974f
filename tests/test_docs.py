"""The docs say what the code does: the configuration table is the argument parser's, and the
repository states what is true now (no development history in docs, bench/, tests/ or code)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import TABLE_END, TABLE_START, markdown_table
from p2pull.peer import events

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = ROOT / "docs" / "operations.md"
# A session or issue number, or the current session named as such: where the code came from,
# not what it is.
# Spelled in pieces so that this file does not match itself.
HISTORY = re.compile(
    r"\b(?:" + "sess" + r"ion \d|this " + "sess" + r"ion|" + "iss" + r"ue #\d)", re.IGNORECASE
)


def test_the_configuration_table_is_what_the_parser_prints() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    assert text.count(TABLE_START) == 1 and text.count(TABLE_END) == 1
    shown = text[text.index(TABLE_START) : text.index(TABLE_END) + len(TABLE_END)]
    assert shown == markdown_table(), (
        "docs/operations.md's configuration table differs from the agent's flags: run "
        "scripts/config-table --write"
    )


def test_the_session_tables_are_the_session_s_own() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    start, end = events.TABLES_START, events.TABLES_END
    assert text.count(start) == 1 and text.count(end) == 1
    shown = text[text.index(start) : text.index(end) + len(end)]
    assert shown == events.markdown_tables(), (
        "docs/architecture.md's phase, event or action table differs from p2pull/peer/events.py:"
        " run scripts/session-tables --write"
    )


def test_the_script_prints_the_table() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config-table")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout == markdown_table() + "\n"


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "README.md", "docs", "bench", "tests", "p2pull", "agent", "deploy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    return [
        ROOT / name
        for name in listed.stdout.split()
        if name.endswith((".md", ".py", ".yaml", ".json", ".toml")) or "Dockerfile" in name
    ]


def test_no_development_history_in_the_repository() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in tracked_text_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if HISTORY.search(line)
    ]
    assert not found, "state what is true now, with the command that shows it:\n" + "\n".join(found)
