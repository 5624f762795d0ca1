"""torchrun on CPU (gloo, 2 processes), compiled step and eager DDP: same trajectory as one process, each process
on its own slice, one set of outputs, no hangs."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import SMALL_MODEL, cli_flags
from fastmmgan.checkpoint import load_checkpoint

STEPS = 6
# The one-process compiled run is test_step's graph, which the inductor cache already holds in a full suite.
ARGS = ["--steps", str(STEPS), *cli_flags(SMALL_MODEL), "--ckpt-every", "3", "--sample-every", "0", "--log-every",
        "3", "--no-progress", "--dist-timeout", "60"]
ROWS = SMALL_MODEL["batch_size"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), "-m", "fastmmgan.train", *args]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_two_processes_follow_the_one_process_trajectory(tmp_path, compiled):
    flag = "--compile" if compiled else "--no-compile"
    two = subprocess.run(_torchrun(2, *ARGS, flag, "--out", str(tmp_path / "two")), env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "fastmmgan.train", *ARGS, flag, "--out", str(tmp_path / "one")],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert a["step"] == b["step"] == STEPS
    for key in ("generator", "discriminator", "ema"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")
    lines = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "step" in line and "loss_d" in line] == [3, 6]
    first = next(line for line in lines if line.get("event") == "first_step")
    assert first["kind"] == ("CompiledStep" if compiled else "ReferenceStep") and first["processes"] == 2
    # Each process trained on its own half: the halves in rank order are the global batch.
    assert first["rows_per_process"] == [ROWS // 2, ROWS // 2] and first["slices_make_the_global_batch"]
    if compiled:
        assert "gradients averaged over 2 processes by collectives inside the compiled graph" in two.stderr
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["last.pt", "step_00000003.pt",
                                                                                    "step_00000006.pt"]


def test_resume_with_a_different_number_of_processes(tmp_path):
    out = tmp_path / "run"
    short = [a if a != str(STEPS) else "3" for a in ARGS]
    first = subprocess.run(_torchrun(2, *short, "--no-compile", "--out", str(out)), env=ENV, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run([sys.executable, "-m", "fastmmgan.train", *ARGS, "--no-compile", "--out", str(out), "--resume"],
                            env=ENV, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    straight = subprocess.run([sys.executable, "-m", "fastmmgan.train", *ARGS, "--no-compile", "--out", str(tmp_path / "one")],
                              env=ENV, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    # 3 steps on 2 processes then 3 on 1 follow the 6-step one-process trajectory (weights, not the step count).
    a, b = load_checkpoint(tmp_path / "one"), load_checkpoint(out)
    assert a["step"] == b["step"] == STEPS
    for key in ("generator", "discriminator", "ema"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")


def _start_long_run(out, *extra: str) -> subprocess.Popen:
    """Two eager processes training far longer than any test waits, in their own session (killable as a group);
    ``extra`` flags come last, so they override ``ARGS``."""
    long_run = [a if a != str(STEPS) else "1000000" for a in ARGS]
    return subprocess.Popen(_torchrun(2, *long_run, "--no-compile", "--ckpt-every", "1000000", "--out", str(out), *extra),
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _workers_once_training(proc: subprocess.Popen, out) -> list[int]:
    """The two worker pids, once both exist and training has written its first log line."""
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while len(workers) < 2 or not (out / "metrics.jsonl").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        found = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
        workers = [int(p) for p in found.split()]
        time.sleep(0.2)
    return workers


def test_a_dead_process_stops_the_others(tmp_path):
    proc = _start_long_run(tmp_path / "run")
    try:
        workers = _workers_once_training(proc, tmp_path / "run")
        os.kill(workers[-1], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "fastmmgan.train" in err and ("SIGKILL" in err or "Signal 9" in err or "exitcode" in err)


def _rank_of(pid: int) -> int | None:
    env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)


def test_a_hung_process_makes_the_others_fail_after_the_dist_timeout(tmp_path):
    """A stopped (not dead) rank 1: rank 0's next collective gives up after --dist-timeout with one clear line."""
    metrics = tmp_path / "run" / "metrics.jsonl"
    proc = _start_long_run(tmp_path / "run", "--dist-timeout", "5")
    try:
        rank1 = next(p for p in _workers_once_training(proc, tmp_path / "run") if _rank_of(p) == 1)
        os.kill(rank1, signal.SIGSTOP)
        stopped = time.monotonic()
        while "peer_lost" not in metrics.read_text():
            assert time.monotonic() - stopped < 60, "rank 0 did not give up on the stopped rank"
            time.sleep(0.2)
        waited = time.monotonic() - stopped
        os.kill(rank1, signal.SIGCONT)  # so it takes torchrun's SIGTERM now rather than after its grace period
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "process 0: a collective did not complete within --dist-timeout 5 s" in err, err[-3000:]
    assert 4 < waited < 30
