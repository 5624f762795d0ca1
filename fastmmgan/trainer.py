"""The training loop: data, models, the step, checkpoints, samples and metrics for one run directory."""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import __version__
from .build import build_models
from .checkpoint import (
    CHECKPOINT_DIR,
    atomic_write_bytes,
    load_checkpoint,
    remove_stale_temp_files,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .data import MultimodalDataset, stored_bytes
from .distributed import DistInfo, barrier, broadcast_from_rank0, gather_rows, init_distributed
from .errors import FastMMGANError, PeerLost, TrainingDiverged
from .prefetch import BatchPrefetcher
from .prepare import open_dataset
from .sample_grids import write_samples
from .step import build_step
from .step_inputs import StepInputs, draw_step_inputs


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FastMMGANError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def check_kernels_can_run(cfg: TrainConfig, device: torch.device) -> None:
    """FastMMGANError for a dispatch that cannot work: Triton kernels forced onto CPU tensors under inductor,
    which has no CPU driver for Triton ops (aot_eager or --no-compile run them, in Triton's interpreter)."""
    from .ops import kernels_mode_now

    try:
        mode = kernels_mode_now()
    except ValueError as e:
        raise FastMMGANError(str(e)) from None
    if mode == "triton" and device.type == "cpu" and cfg.compile and cfg.compile_backend == "inductor":
        raise FastMMGANError(
            "FASTMMGAN_KERNELS=triton on --device cpu needs --compile-backend aot_eager or --no-compile "
            "(inductor cannot compile Triton ops for CPU tensors), and TRITON_INTERPRET=1"
        )


def _peer_stopped(e: BaseException) -> bool:
    """Whether a collective failed because another process stopped answering (gloo and NCCL's wording)."""
    text = str(e).lower()
    return any(w in text for w in ("timed out", "timeout", "connection closed", "connection reset", "broken pipe"))


class Trainer:
    """Owns one run: ``out_dir`` holds config.json, checkpoints/, samples/, metrics.jsonl and tb/."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, resume: str | Path | None = None,
                 progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.dist: DistInfo = init_distributed(resolve_device(cfg.device), cfg.dist_timeout)
        self.device = self.dist.device
        check_kernels_can_run(cfg, self.device)
        if cfg.batch_size % self.dist.world:
            raise FastMMGANError(f"batch-size {cfg.batch_size} (global) must be divisible by the {self.dist.world} processes")
        torch.manual_seed(cfg.seed)
        ds = self._open_data(progress)
        if len(ds) < 2:
            raise FastMMGANError(f"the dataset has {len(ds)} sample(s); at least 2 are needed for a train/test split")
        self.train_ds, self.test_ds = ds.split(cfg.test_fraction, cfg.seed)
        if len(self.train_ds) < cfg.batch_size:
            raise FastMMGANError(f"batch-size {cfg.batch_size} is larger than the training split ({len(self.train_ds)} samples)")
        self.specs = ds.specs
        models = build_models(self.train_ds, cfg, self.device)
        self.batches_ds = self._batch_source()
        self.data_on_device = self.batches_ds is not self.train_ds
        self.G, self.D, self.ema, self.opt_g, self.opt_d = models.G, models.D, models.ema, models.opt_g, models.opt_d
        self.step = 0
        if resume is not None:
            self.load_state(load_checkpoint(resume))
        self._first_step = self.step
        self._first_launches: dict[str, int] = {}
        self._evaluator = None
        self.step_fn = self._build_step()

    def _open_data(self, progress: bool) -> MultimodalDataset:
        """The run's dataset. Files are prepared once: under torchrun the first process to take the cache's lock
        prepares while the others wait on it (a file lock, not a collective, so a preparation may take longer
        than --dist-timeout), then every process opens the same cache."""
        ds, self.prepared = open_dataset(self.cfg, progress=progress and self.dist.is_main)
        return ds

    def _batch_source(self) -> MultimodalDataset:
        """What batches are drawn from: the training split, with its features moved to the GPU when
        ``--data-on-device`` says so (auto: when they take at most a quarter of the free device memory).
        Evaluation keeps reading the split on the CPU."""
        if self.device.type != "cuda" or self.cfg.data_on_device == "no":
            return self.train_ds
        need = stored_bytes(self.train_ds)
        free = torch.cuda.mem_get_info(self.device)[0]
        if self.cfg.data_on_device == "auto" and need > free / 4:
            return self.train_ds
        return self.train_ds.features_to(self.device)

    def _batches(self) -> BatchPrefetcher:
        """Step inputs for steps from now on, drawn one step ahead in a thread where ``--prefetch`` says so
        (auto: on CUDA when the training data is not on the device)."""
        ahead = self.cfg.prefetch == "yes" or (self.cfg.prefetch == "auto" and self.device.type == "cuda"
                                               and not self.data_on_device)
        cfg, rank, world = self.cfg, self.dist.rank, self.dist.world
        return BatchPrefetcher(lambda step: draw_step_inputs(self.batches_ds, step, cfg, rank, world), cfg.steps,
                               ahead=ahead, pin=ahead and self.device.type == "cuda")

    def _build_step(self) -> Callable[[StepInputs], dict[str, torch.Tensor]]:
        """The compiled step (or the reference one with ``--no-compile``). Under torchrun the compiled step
        averages gradients with collectives traced into its graph; the reference step wraps both models in
        DistributedDataParallel. Either way every process starts from rank 0's state."""
        if not self.dist.enabled:
            return build_step(self.G, self.D, self.ema, self.opt_g, self.opt_d, self.cfg, self.device)
        broadcast_from_rank0([*self.G.state_dict().values(), *self.D.state_dict().values(),
                              *self.ema.state_dict().values()])
        if self.cfg.compile:
            step = build_step(self.G, self.D, self.ema, self.opt_g, self.opt_d, self.cfg, self.device)
            if self.dist.is_main:
                print(f"training step: {type(step).__name__}, gradients averaged over {self.dist.world} processes "
                      "by collectives inside the compiled graph", file=sys.stderr)
            return step
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        g_ddp, d_ddp = DDP(self.G, device_ids=ids), DDP(self.D, device_ids=ids)
        return build_step(g_ddp, d_ddp, self.ema, self.opt_g, self.opt_d, self.cfg, self.device)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "fastmmgan-checkpoint",
            "version": __version__,
            "step": self.step,
            "config": self.cfg.to_dict(),
            "specs": [s.to_dict() for s in self.specs],
            "generator": self.G.state_dict(),
            "discriminator": self.D.state_dict(),
            "ema": self.ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": rng_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint of the same architecture and data."""
        saved = TrainConfig.from_dict(state["config"])
        if saved.model_hash() != self.cfg.model_hash() or [s.to_dict() for s in self.specs] != state["specs"]:
            raise FastMMGANError("the checkpoint was trained with a different model or dataset; use a new --out")
        try:
            self.G.load_state_dict(state["generator"])
            self.D.load_state_dict(state["discriminator"])
            self.ema.load_state_dict(state["ema"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise FastMMGANError(f"checkpoint does not match this model: {str(e).splitlines()[0]}") from None
        self.step = int(state["step"])
        set_rng_state(state["rng"])

    def save(self) -> Path:
        return save_checkpoint(self.out, self.step, self.state_dict(), keep=self.cfg.keep_checkpoints)

    def write_samples(self) -> Path:
        sample_dir = self.out / "samples" / f"step_{self.step:08d}"
        write_samples(self.ema, self.test_ds, sample_dir, seed=self.cfg.seed)
        return sample_dir

    def run(self, progress: bool = True) -> dict[str, float]:
        """Train until ``cfg.steps``; returns the last logged metrics.

        Only rank 0 writes (config, checkpoints, samples, logs); the others wait at a barrier whenever a
        checkpoint is written. Non-finite updates are skipped by the step and counted here; after
        ``cfg.max_bad_steps`` in a row training stops with :class:`TrainingDiverged`, leaving the last
        good checkpoint as it was; no checkpoint is written right after a skipped update.
        """
        cfg, main = self.cfg, self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(self.out)
            atomic_write_bytes(self.out / "config.json", json.dumps(cfg.to_dict(), indent=2).encode())
        log = RunLog(self.out, enabled=main)
        self._log_data(log)
        batches = self._batches()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (progress and main), desc="train", unit="step")
        bad_run = torch.zeros((), device=self.device)
        worst_run = torch.zeros((), device=self.device)
        skipped = torch.zeros((), device=self.device)
        t_window, n_window = time.perf_counter(), 0
        last: dict[str, float] = {}
        try:
            while self.step < cfg.steps:
                batch = batches.get(self.step)
                if self.step == self._first_step:
                    out = self._first_step_call(batch)
                    self._log_first_step(log, batch)
                else:
                    out = self.step_fn(batch.to(self.device))
                self.step += 1
                n_window += 1
                bad = out.get("skipped", torch.zeros((), device=self.device)).detach()
                bad_run = (bad_run + 1) * bad
                worst_run = torch.maximum(worst_run, bad_run)
                skipped += bad
                if cfg.log_every and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                    now = time.perf_counter()
                    last = {"loss_d": float(out["loss_d"]), "loss_g": float(out["loss_g"]), "skipped": float(skipped),
                            "steps_per_s": n_window / (now - t_window)}
                    t_window, n_window, skipped = now, 0, torch.zeros_like(skipped)
                    log.scalars(self.step, last)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in last.items() if k != "skipped"})
                bar.update(1)
                if self.step % cfg.max_bad_steps == 0 or self.step == cfg.steps:
                    self._check_divergence(int(worst_run.item()), log)
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self._on_rank0(self.write_samples)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self._on_rank0(lambda: log.scalars(self.step, self.evaluate(), prefix="eval"))
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self._check_divergence(int(worst_run.item()), log)
                    if bad_run.item() == 0:
                        self._on_rank0(self.save)
                    else:
                        log.event("checkpoint_skipped", step=self.step, reason="the last update was not finite")
            if not (cfg.ckpt_every and self.step % cfg.ckpt_every == 0):
                self._on_rank0(self.save)
            if not (cfg.sample_every and self.step % cfg.sample_every == 0):
                self._on_rank0(self.write_samples)
        except RuntimeError as e:  # torch.distributed's errors (DistBackendError and kin) are RuntimeErrors
            if self.dist.enabled and _peer_stopped(e):
                log.event("peer_lost", step=self.step, rank=self.dist.rank)
                raise PeerLost(
                    f"process {self.dist.rank}: a collective did not complete within --dist-timeout "
                    f"{cfg.dist_timeout:g} s at step {self.step} (another process hung or died); the last "
                    f"checkpoint is in {self.out / CHECKPOINT_DIR}"
                ) from None
            raise
        finally:
            batches.close()
            bar.close()
            log.close()
        return last

    def _log_data(self, log: RunLog) -> None:
        """Where the data came from (prepared now or reused from the cache, files/s) and the bad files left out
        (``bad_files.jsonl`` in the run directory, one ``{"file", "row", "reason"}`` a line)."""
        if self.prepared is None or not self.dist.is_main:
            return
        p = self.prepared
        log.event("data", cache=str(p.cache_dir), reused=p.reused, rows=len(p.dataset), on_device=self.data_on_device,
                  **p.notes.get("decode", {}), captions=p.notes.get("captions", {}))
        if p.bad_files:
            lines = "".join(json.dumps({"file": f, "row": w, "reason": r}) + "\n" for f, w, r in p.bad_files)
            atomic_write_bytes(self.out / "bad_files.jsonl", lines.encode())
            log.event("bad_files", count=len(p.bad_files))
            print(f"skipped {len(p.bad_files)} unreadable file(s), listed in {self.out / 'bad_files.jsonl'}", file=sys.stderr)

    def _first_step_call(self, batch: StepInputs) -> dict[str, torch.Tensor]:
        """The first step, where a kernel that cannot run fails: Triton kernels forced onto CPU tensors
        without the interpreter become one clear error instead of a traceback from deep in the compiler."""
        from .ops import kernels_mode_now

        before = _kernel_launches()
        try:
            out = self.step_fn(batch.to(self.device))
            self._first_launches = dict(_kernel_launches() - before)
            return out
        except Exception as e:
            if kernels_mode_now() != "triton" or self.device.type != "cpu":
                raise
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise FastMMGANError(
                f"the Triton kernels failed on the first training step on cpu ({type(e).__name__}: {first}); "
                "FASTMMGAN_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1 (Triton's interpreter)"
            ) from None

    def _log_first_step(self, log: RunLog, batch: StepInputs) -> None:
        """After the first step: how it ran (compile time, which ops ran where), the kernels' self-checks and,
        under torchrun, each process's rows and whether together they are the global batch, once each."""
        from . import selfcheck
        from .ops import kernels_mode_now

        compile_s = getattr(self.step_fn, "compile_seconds", None)
        if compile_s is not None:
            log.event("compiled", step=self.step, seconds=round(compile_s, 2), backend=self.cfg.compile_backend)
        log.event("first_step", step=self.step, kind=type(self.step_fn).__name__, kernels=kernels_mode_now(),
                  device=str(self.device), precision=self.cfg.precision, kernel_launches=self._first_launches,
                  processes=self.dist.world, **self._batch_split(batch))
        if selfcheck.records:
            log.event("kernel_self_check", checks=selfcheck.records)

    def _batch_split(self, batch: StepInputs) -> dict[str, object]:
        """Under torchrun: rows per process, and whether the processes' rows in rank order are the global batch
        (a process training on another's slice, or all on the same one, would still follow the trajectory)."""
        if not self.dist.enabled:
            return {}
        rows = gather_rows(torch.tensor([len(batch.z)], device=self.device)).tolist()
        together = gather_rows(batch.z.to(self.device)).cpu()
        whole = draw_step_inputs(self.train_ds, self.step, self.cfg).z
        return {"rows_per_process": rows, "slices_make_the_global_batch": bool(torch.equal(together, whole))}

    def evaluate(self, n: int = 1000) -> dict[str, float]:
        """Quality metrics of the EMA generator (see :mod:`fastmmgan.evaluator`); evaluators cached in the run."""
        from .evaluator import Evaluator
        from .evaluator_nets import CACHE_NAME

        if self._evaluator is None:
            self._evaluator = Evaluator.build(self.train_ds, self.test_ds, cache_path=self.out / CACHE_NAME, seed=self.cfg.seed)
        scores = self._evaluator.evaluate(self.ema, n=n, seed=self.cfg.seed)
        return {k: v for k, v in scores.items() if math.isfinite(v)}

    def _check_divergence(self, worst_run: int, log: RunLog) -> None:
        if worst_run >= self.cfg.max_bad_steps:
            log.event("diverged", step=self.step, bad_steps_in_a_row=worst_run)
            raise TrainingDiverged(
                f"training stopped at step {self.step}: {worst_run} non-finite updates in a row were skipped; "
                f"the last good checkpoint is in {self.out / CHECKPOINT_DIR} (try a lower --lr or another --loss)"
            )

    def _on_rank0(self, work: Callable[[], object]) -> None:
        """Run ``work`` on rank 0 while the other processes wait."""
        if self.dist.is_main:
            work()
        barrier(self.dist)


class RunLog:
    """metrics.jsonl (one JSON object a line) and TensorBoard scalars; a no-op off rank 0."""

    def __init__(self, out: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.file = open(out / "metrics.jsonl", "a")
        self.writer = SummaryWriter(str(out / "tb"))

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        self._line({"step": step, **(values if prefix == "train" else {f"{prefix}/{k}": v for k, v in values.items()})})
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def event(self, name: str, **fields: object) -> None:
        if self.enabled:
            self._line({"event": name, **fields})

    def _line(self, record: dict[str, object]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.writer.close()


def _kernel_launches() -> Counter[str]:
    """Triton kernel launches so far in this process, per kernel (empty when the kernels were never imported)."""
    kernels = sys.modules.get("fastmmgan.kernels.fused_dense")
    return Counter(kernels.launches) if kernels is not None else Counter()
