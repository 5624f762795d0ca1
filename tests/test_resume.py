"""Crash safety: exact resume after SIGKILL, checkpoints that survive a kill mid-write, clear errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import SMALL_MODEL, cli_flags
from fastmmgan import checkpoint, train
from fastmmgan.checkpoint import load_checkpoint, save_checkpoint
from fastmmgan.errors import FastMMGANError

STEPS = 150
ARGS = ["--steps", str(STEPS), *cli_flags(SMALL_MODEL), "--ckpt-every", "5", "--keep-checkpoints", "2",
        "--sample-every", "0", "--log-every", "10", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train_process(out: Path, *extra: str, compile_flag: str = "--no-compile") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fastmmgan.train", *ARGS, compile_flag, "--out", str(out), *extra]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training exited early: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


@pytest.mark.parametrize("compile_flag", ["--no-compile", "--compile"], ids=["eager", "compiled"])
def test_sigkill_then_resume_is_bitwise_identical_to_a_straight_run(tmp_path, compile_flag):
    """Weights, EMA and Adam state after kill -9 and --resume equal an uninterrupted run's, bit for bit, on the
    eager step and on the default compiled one (which recompiles in the resumed process)."""
    straight = _train_process(tmp_path / "straight", compile_flag=compile_flag)
    killed = _train_process(tmp_path / "killed", compile_flag=compile_flag)
    # last.pt, once it exists, always names a complete checkpoint; a step file can appear before last.pt
    # points at it, and a specific one can be rotated away (only the newest two are kept) between polls.
    _wait_for(tmp_path / "killed" / "checkpoints" / "last.pt", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert straight.wait(timeout=300) == 0, straight.stderr.read()
    interrupted_at = load_checkpoint(tmp_path / "killed")["step"]
    assert 5 <= interrupted_at < STEPS

    resumed = _train_process(tmp_path / "killed", "--resume", compile_flag=compile_flag)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "killed")
    assert a["step"] == b["step"] == STEPS
    for key in ("generator", "ema", "discriminator"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    for key in ("opt_g", "opt_d"):
        for i, state in a[key]["state"].items():
            for name in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(state[name], b[key]["state"][i][name]), f"{key}[{i}].{name} differs after resume"


def _state(step: int) -> dict:
    return {"format": "fastmmgan-checkpoint", "step": step, "weights": torch.full((4,), float(step))}


def test_a_kill_during_a_checkpoint_write_leaves_the_last_good_one(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, _state(1))

    def dies_half_way(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, _state(2))
    assert load_checkpoint(tmp_path)["step"] == 1
    assert not (tmp_path / "checkpoints" / "step_00000002.pt").exists()
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


_KILLED_WRITER = """
import sys, time
from pathlib import Path
import torch
from fastmmgan import checkpoint

def stalls_half_way(obj, f):
    f.write(b"PK\\x03\\x04 half a checkpoint")
    f.flush()
    Path(sys.argv[2]).touch()
    time.sleep(600)

checkpoint.torch.save = stalls_half_way
checkpoint.save_checkpoint(sys.argv[1], 99, {"format": "fastmmgan-checkpoint", "step": 99})
"""


def test_a_real_sigkill_mid_write_keeps_last_pt_and_the_next_start_cleans_up(tmp_path):
    """A process killed with SIGKILL while it writes a checkpoint leaves a temp file and nothing else: last.pt
    still loads, and the next training start (here a --resume) removes the stale temp file."""
    out = tmp_path / "run"
    short = [a if a != str(STEPS) else "5" for a in ARGS] + ["--no-compile"]
    assert train.main([*short, "--out", str(out)]) == 0
    ready = tmp_path / "writing"
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(out), str(ready)], env=ENV,
                              stderr=subprocess.PIPE, text=True)
    _wait_for(ready, writer)
    writer.send_signal(signal.SIGKILL)
    assert writer.wait() == -signal.SIGKILL
    stale = list((out / "checkpoints").glob(".step_00000099.pt.*.tmp"))
    assert len(stale) == 1 and stale[0].read_bytes().startswith(b"PK")
    assert load_checkpoint(out)["step"] == 5
    assert not (out / "checkpoints" / "step_00000099.pt").exists()
    longer = [a if a != "5" else "6" for a in short]
    assert train.main([*longer, "--out", str(out), "--resume"]) == 0
    assert not list((out / "checkpoints").glob(".*.tmp"))
    assert load_checkpoint(out)["step"] == 6


_KILLED_BEFORE_LAST = """
import sys, time
from pathlib import Path
from fastmmgan import checkpoint

def stalls(src, dst):  # the step file is complete; last.pt is about to point at it
    Path(sys.argv[3]).touch()
    time.sleep(600)

state = checkpoint.load_checkpoint(sys.argv[1])
checkpoint.os.link = stalls
checkpoint.save_checkpoint(sys.argv[2], state["step"], state)
"""


def test_a_run_killed_before_its_first_last_pt_resumes_from_its_step_file(tmp_path, caplog):
    """A real SIGKILL between writing a run's first step checkpoint and pointing last.pt at it: a bare --resume
    continues from that step file (and says so), and ends where a straight run does, weight for weight."""
    short = [a if a != str(STEPS) else "5" for a in ARGS] + ["--no-compile"]
    longer = [a if a != "5" else "8" for a in short]
    assert train.main([*short, "--out", str(tmp_path / "first")]) == 0
    assert train.main([*longer, "--out", str(tmp_path / "straight")]) == 0
    killed, ready = tmp_path / "killed", tmp_path / "linking"
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_BEFORE_LAST, str(tmp_path / "first"), str(killed),
                               str(ready)], env=ENV, stderr=subprocess.PIPE, text=True)
    _wait_for(ready, writer)
    writer.send_signal(signal.SIGKILL)
    assert writer.wait() == -signal.SIGKILL
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step_00000005.pt"]
    with caplog.at_level("WARNING", logger="fastmmgan"):
        assert train.main([*longer, "--out", str(killed), "--resume"]) == 0
    assert "has no last.pt" in caplog.text and "resuming from step_00000005.pt" in caplog.text
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(killed)
    assert a["step"] == b["step"] == 8
    for key in ("generator", "ema", "discriminator"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"


def test_keeps_the_newest_checkpoints(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, _state(step), keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert names == ["last.pt", "step_00000004.pt", "step_00000005.pt"]
    assert load_checkpoint(tmp_path)["step"] == 5


def test_truncated_and_foreign_checkpoints_name_the_file(tmp_path):
    path = save_checkpoint(tmp_path, 3, _state(3))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(FastMMGANError, match=f"{truncated}.*not a readable fastmmgan checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.zeros(2)}, foreign)
    with pytest.raises(FastMMGANError, match=f"{foreign} is not a fastmmgan checkpoint"):
        load_checkpoint(foreign)


def test_resume_refuses_another_architecture(tmp_path, capsys):
    out = tmp_path / "run"
    small = [a if a != str(STEPS) else "5" for a in ARGS] + ["--no-compile"]
    assert train.main([*small, "--out", str(out)]) == 0
    with pytest.raises(FastMMGANError, match="different model"):
        train.main([*small, "--out", str(out), "--resume", "--g-width", "24"])


def test_resume_keeps_the_recipe_the_checkpoint_was_trained_with(tmp_path):
    """``--resume`` with no other flags trains on with the checkpoint's settings, not the library's defaults
    (which may have changed since); flags given as well still win (``--steps`` to train longer)."""
    out = tmp_path / "run"
    short = [a if a != str(STEPS) else "5" for a in ARGS] + ["--no-compile", "--mmd-weight", "3",
                                                             "--condition-noise", "0.1"]
    assert train.main([*short, "--out", str(out)]) == 0
    assert train.main(["--out", str(out), "--resume", "--steps", "6", "--no-progress"]) == 0
    assert train.main(["--out", str(out), "--resume", str(out / "checkpoints" / "last.pt"), "--steps", "7",
                       "--no-progress"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["mmd_weight"], saved["condition_noise"], saved["steps"]) == (3.0, 0.1, 7)
    state = load_checkpoint(out)
    assert state["config"]["mmd_weight"] == 3.0 and state["step"] == 7
