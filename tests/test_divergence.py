"""Non-finite updates are skipped and counted; too many in a row stop training with the last good checkpoint intact."""

import json
import math

import pytest
import torch

from conftest import SMALL_MODEL
from fastmmgan.checkpoint import load_checkpoint
from fastmmgan.config import TrainConfig
from fastmmgan.errors import TrainingDiverged
from fastmmgan.trainer import Trainer


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_nan_weights_are_skipped_then_training_stops(tmp_path, compiled):
    cfg = TrainConfig(**SMALL_MODEL, steps=40, device="cpu", ckpt_every=4, sample_every=0, log_every=2,
                      max_bad_steps=5, compile=compiled)
    trainer = Trainer(cfg, tmp_path)
    step_fn = trainer.step_fn

    def poisoned(batch):
        if trainer.step == 6:
            with torch.no_grad():
                trainer.D.head.weight.fill_(float("nan"))
        return step_fn(batch)

    trainer.step_fn = poisoned
    with pytest.raises(TrainingDiverged, match="non-finite updates in a row"):
        trainer.run(progress=False)
    state = load_checkpoint(tmp_path)
    assert state["step"] == 4
    assert all(torch.isfinite(t).all() for t in state["discriminator"].values())
    assert all(torch.isfinite(t).all() for t in state["generator"].values())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("skipped", 0) > 0 for r in records)
    assert records[-1]["event"] == "diverged"
    assert all(math.isfinite(v) for v in trainer.G.state_dict()["head.weight"].flatten().tolist())
