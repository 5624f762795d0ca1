"""A benchmark module's closing summary, written past pytest's output capture (teardown output is otherwise dropped)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest


def print_summary(config: pytest.Config, lines: Sequence[str]) -> None:
    """Write ``lines`` to the terminal after the module's benchmarks ran (nothing when no line was measured)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or len(lines) < 2:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)
