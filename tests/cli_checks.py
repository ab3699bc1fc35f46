"""Checks shared by the command-line tests."""

from __future__ import annotations

from click.testing import Result


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """Assert exit code 2, one error line on stderr containing every fragment, and no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    # tqdm redraws its progress bar with carriage returns; those redraws are not error lines.
    lines = [line for line in result.stderr.strip().splitlines() if "it/s]" not in line and line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]
