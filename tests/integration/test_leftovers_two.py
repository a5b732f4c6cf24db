"""Acceptance leftovers (second pass) that no command's own test file pins: what the user docs promise."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_exit_codes_say_what_a_stop_before_the_start_leaves():
    """README's 130/143 row said only that a stop before the trainer is up leaves no checkpoint; docs/run-dir.md and
    `scalerl train` (commit ea7fbc0) say more: one line, and a run dir that start created is removed."""
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| 130 / 143 |"))
    assert "stopped by SIGTERM before the run started" in row, row
    assert "one line" in row and "a run dir that start created is removed" in row, row
    promised = (ROOT / "docs" / "run-dir.md").read_text()
    assert "stopped by SIGTERM before the run started" in promised
    assert "A run dir that start created and locked is removed" in promised
