"""The commands' log lines: info by default on stderr, -q keeps only warnings and errors, stdout stays the output."""

import pytest

from fastmmgan.export.__main__ import main as export_main


@pytest.mark.parametrize("flags, shown", [([], True), (["-q"], False), (["-v"], True)])
def test_log_lines_follow_the_verbosity_flags(tiny_run, tmp_path, capsys, flags, shown):
    assert export_main([str(tiny_run), "--out", str(tmp_path / "gen.onnx"), *flags]) == 0
    out, err = capsys.readouterr()
    assert ("INFO fastmmgan.export: ONNX Runtime runs" in err) == shown
    assert "ONNX Runtime runs" not in out and "wrote " in out
