"""The commands' log lines: warnings by default on stderr, -v adds info lines, -q keeps errors only; stdout stays
the command's output."""

import pytest

from fastmmgan.export.__main__ import main as export_main


@pytest.mark.parametrize("flags, shown", [(["-v"], True), ([], False), (["-q"], False), (["-vv"], True)])
def test_log_lines_follow_the_verbosity_flags(tiny_run, tmp_path, capsys, flags, shown):
    assert export_main([str(tiny_run), "--out", str(tmp_path / "gen.onnx"), *flags]) == 0
    out, err = capsys.readouterr()
    assert ("INFO fastmmgan.export: ONNX Runtime runs" in err) == shown
    assert "ONNX Runtime runs" not in out and "wrote " in out
