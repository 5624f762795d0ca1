"""A short training run end to end, using the trained model, and the command line tools' errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastmmgan import generate, load_generator, train
from fastmmgan.checkpoint import load_checkpoint
from fastmmgan.cli import run_cli
from fastmmgan.config import TrainConfig
from fastmmgan.errors import FastMMGANError

TINY = ["--steps", "6", "--batch-size", "16", "--g-width", "32", "--d-width", "32", "--z-dim", "8",
        "--ckpt-every", "3", "--sample-every", "6", "--log-every", "3", "--no-compile", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert train.main([*TINY, "--out", str(out)]) == 0
    return out


def test_run_writes_everything_a_user_looks_at(run_dir):
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["steps"] == 6 and cfg["loss"] == "ns"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == ["last.pt", "step_00000003.pt",
                                                                             "step_00000006.pt"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lines = [r for r in records if "event" not in r]
    assert [line["step"] for line in lines] == [3, 6]
    first = next(r for r in records if r.get("event") == "first_step")
    assert first["kind"] == "ReferenceStep" and first["kernels"] == "auto" and first["kernel_launches"] == {}
    assert all(np.isfinite(line["loss_d"]) and np.isfinite(line["loss_g"]) for line in lines)
    samples = run_dir / "samples" / "step_00000006"
    names = {p.name for p in samples.iterdir()}
    assert {"noise_to_image.png", "text_to_image.png", "audio_to_image.png", "image_to_text.txt",
            "image_to_audio.wav", "noise_to_audio.wav", "noise_to_text.txt"} <= names
    assert any((run_dir / "tb").iterdir())
    assert "label 7:" in (samples / "image_to_text.txt").read_text()


def test_checkpoint_is_complete_and_last_is_newest(run_dir):
    state = load_checkpoint(run_dir)
    assert state["step"] == 6 and state["format"] == "fastmmgan-checkpoint"
    assert {"generator", "discriminator", "ema", "opt_g", "opt_d", "rng", "config", "specs", "version"} <= set(state)
    step6 = torch.load(run_dir / "checkpoints" / "step_00000006.pt", weights_only=True)
    assert torch.equal(step6["ema"]["head.weight"], state["ema"]["head.weight"])


def test_sampler_raw_forms_and_determinism(run_dir):
    sampler = load_generator(run_dir)
    assert [s.name for s in sampler.modalities] == ["image", "text", "audio"]
    out = sampler.sample(3, given={"text": "seven"}, seed=5)
    assert out["image"].shape == (3, 8, 8) and out["image"].dtype == np.float32
    assert 0 <= out["image"].min() and out["image"].max() <= 1
    assert out["audio"].shape == (3, 1024) and np.abs(out["audio"]).max() <= 1
    assert out["text"] == ["seven"] * 3
    again = sampler.sample(3, given={"text": "seven"}, seed=5)
    assert np.array_equal(out["image"], again["image"]) and np.array_equal(out["audio"], again["audio"])
    other = sampler.sample(3, given={"text": "seven"}, seed=6)
    assert not np.array_equal(out["image"], other["image"])


@pytest.mark.parametrize(
    "given, message",
    [({"video": 1}, "unknown modality 'video'"), ({"text": ["one", "two"]}, "2 captions for n=3"),
     ({"image": np.zeros((3, 4, 4))}, r"shape \[n, 8, 8\]"), ({"text": "seven apples"}, "apples")],
)
def test_sampler_rejects_bad_conditions(run_dir, given, message):
    with pytest.raises(FastMMGANError, match=message):
        load_generator(run_dir).sample(3, given=given)


def test_resume_continues_to_more_steps(run_dir, tmp_path):
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(run_dir, out)
    args = [a if a != "6" else "9" for a in TINY]
    assert train.main([*args, "--out", str(out), "--resume"]) == 0
    assert train.main([*args, "--out", str(tmp_path / "straight")]) == 0
    resumed, straight = load_checkpoint(out), load_checkpoint(tmp_path / "straight")
    assert resumed["step"] == straight["step"] == 9
    # Weights, EMA and optimizer state equal an uninterrupted 9-step run's, bit for bit (from scratch they would not).
    for key in ("generator", "discriminator", "ema"):
        for name, tensor in straight[key].items():
            assert torch.equal(resumed[key][name], tensor), f"{key}.{name}"
    for key in ("opt_g", "opt_d"):
        for i, state in straight[key]["state"].items():
            for name in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(resumed[key]["state"][i][name], state[name]), f"{key}[{i}].{name}"


def test_generate_cli_writes_files(run_dir, tmp_path):
    out = tmp_path / "gen"
    assert generate.main([str(run_dir), "--n", "4", "--given", "text=the number 3", "--seed", "1", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"image.png", "text.txt", "audio.wav"}
    assert (out / "text.txt").read_text().splitlines() == ["the number 3"] * 4


def _cli_error(main, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and "\n" not in err
    return err


@pytest.mark.parametrize(
    "argv, message",
    [(["--steps", "0"], "steps must be positive"), (["--batch-size", "-1"], "batch-size must be positive"),
     (["--data", "/nonexistent/x.npz"], "data file not found"),
     (["--data", "/nonexistent/pets"], "--data /nonexistent/pets: not found (expected a data folder, hf:PATH or an .npz"),
     (["--batch-size", "5000"], "larger than the training split"), (["--resume"], "no checkpoint to resume"),
     (["--device", "cuda"] if not torch.cuda.is_available() else ["--lr", "0"], ""),
     (["--g-widths", "128"], "g-widths needs the fusion's width and at least one layer's"),
     (["--d-widths", "256,0"], "d-widths needs the fusion's width and at least one layer's"),
     (["--mbstd-group", "-1"], "mbstd-group must be >= 0"),
     (["--energy-spread", "1.5"], "energy-spread must be in [0, sqrt(2) = 1.414), got 1.5"),
     (["--energy-spread-kinds", "image,video"], "energy-spread-kinds: unknown kind 'video'")],
)
def test_train_cli_errors(tmp_path, capsys, argv, message):
    err = _cli_error(train.main, [*TINY, "--out", str(tmp_path / "o"), *argv], capsys)
    assert message in err


@pytest.mark.parametrize(
    "argv, message",
    [(["--compile-backend", "cudagraphs"], "argument --compile-backend: invalid choice: 'cudagraphs'"),
     (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
     (["--g-widths", "128,x"], "argument --g-widths: expected comma-separated layer widths such as 128,256"),
     (["--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist'"),
     (["--image-size", "16,x"], "argument --image-size: expected H or H,W such as 32 or 32,48, got '16,x'"),
     (["--image-channels", "2"], "argument --image-channels: invalid choice: 2")],
)
def test_train_cli_usage_errors(capsys, argv, message):
    """Flags argparse itself rejects: usage, then the one error line, exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        train.build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


# A value other than the default for every TrainConfig field, as a user would type it.
OTHER_VALUES = {
    "dataset": ("--dataset", "colour-digits", "colour-digits"), "data": ("--data", "x.npz", "x.npz"),
    "steps": ("--steps", "7", 7),
    "batch_size": ("--batch-size", "8", 8),
    "lr": ("--lr", "0.001", 1e-3), "d_lr": ("--d-lr", "0.002", 2e-3), "betas": ("--betas", "0.1 0.9", (0.1, 0.9)),
    "loss": ("--loss", "hinge", "hinge"), "gp_weight": ("--gp-weight", "3", 3.0), "r1_weight": ("--r1-weight", "0.5", 0.5),
    "diversity_weight": ("--diversity-weight", "0", 0.0), "mmd_weight": ("--mmd-weight", "2", 2.0),
    "cond_diversity_weight": ("--cond-diversity-weight", "0.5", 0.5),
    "energy_weight": ("--energy-weight", "0.5", 0.5), "energy_spread": ("--energy-spread", "1.1", 1.1),
    "energy_noise_rows": ("--energy-noise-rows", None, True),
    "condition_noise": ("--condition-noise", "0.05", 0.05),
    "energy_spread_kinds": ("--energy-spread-kinds", "image,audio", "image,audio"),
    "recon_weight": ("--recon-weight", "3", 3.0), "kl_weight": ("--kl-weight", "0.5", 0.5),
    "latent_weight": ("--latent-weight", "0.25", 0.25), "e_width": ("--e-width", "40", 40), "e_depth": ("--e-depth", "3", 3),
    "conditioned_components": ("--no-conditioned-components", None, False),
    "fusion": ("--fusion", "attention", "attention"),
    "z_dim": ("--z-dim", "16", 16), "z_components": ("--z-components", "4", 4), "g_width": ("--g-width", "33", 33),
    "g_depth": ("--g-depth", "3", 3), "d_width": ("--d-width", "34", 34), "d_depth": ("--d-depth", "1", 1),
    "g_widths": ("--g-widths", "8,9", (8, 9)), "d_widths": ("--d-widths", "9,8", (9, 8)),
    "mbstd_group": ("--mbstd-group", "0", 0), "ema_decay": ("--ema-decay", "0.5", 0.5), "seed": ("--seed", "5", 5),
    "test_fraction": ("--test-fraction", "0.3", 0.3), "device": ("--device", "cpu", "cpu"),
    "compile": ("--no-compile", None, False), "compile_backend": ("--compile-backend", "aot_eager", "aot_eager"),
    "precision": ("--precision", "fp32", "fp32"), "ckpt_every": ("--ckpt-every", "4", 4),
    "keep_checkpoints": ("--keep-checkpoints", "2", 2), "sample_every": ("--sample-every", "5", 5),
    "eval_every": ("--eval-every", "6", 6), "log_every": ("--log-every", "7", 7), "max_bad_steps": ("--max-bad-steps", "9", 9),
    "dist_timeout": ("--dist-timeout", "12.5", 12.5),
    "modalities": ("--modalities", "pic=image,tag=text", "pic=image,tag=text"),
    "image_size": ("--image-size", "32,48", (32, 48)), "image_channels": ("--image-channels", "3", 3),
    "sample_rate": ("--sample-rate", "16000", 16000), "clip_seconds": ("--clip-seconds", "0.5", 0.5),
    "max_vocab": ("--max-vocab", "50", 50), "skip_bad_files": ("--skip-bad-files", None, True),
    "cache_dir": ("--cache-dir", "/tmp/c", "/tmp/c"), "data_on_device": ("--data-on-device", "no", "no"),
    "prefetch": ("--prefetch", "yes", "yes"),
}


def test_every_config_field_is_a_flag_with_its_default_and_help():
    """No TrainConfig field is unreachable from the command line: each one's flag sets it, and without flags
    the parsed config is TrainConfig's defaults."""
    fields = set(TrainConfig.__dataclass_fields__)
    assert fields <= OTHER_VALUES.keys(), f"fields without a value in this test: {fields - OTHER_VALUES.keys()}"
    assert train.config_from_args(train.parse_args([])) == TrainConfig()
    helps = {a.dest: a.help for a in train.build_parser()._actions}
    for name, (flag, text, value) in OTHER_VALUES.items():
        argv = [flag] if text is None else [flag, *text.split()]
        cfg = train.config_from_args(train.parse_args(argv))
        assert getattr(cfg, name) == value, flag
        assert helps[name], f"{flag} has no help"
        others = {k: v for k, v in cfg.to_dict().items() if k != name and k != "z_components"}
        assert others == {k: v for k, v in TrainConfig().to_dict().items() if k != name and k != "z_components"}, flag
    assert "--dataset" in train.build_parser().format_help()


def test_train_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--batch-size BATCH_SIZE" in out and "Adam betas of both optimizers" in out
    assert "--dataset {digits,colour-digits} | --data DATA" in out


def test_train_cli_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "not a writable directory" in _cli_error(train.main, [*TINY, "--out", str(blocker / "run")], capsys)


def test_generate_cli_errors(run_dir, tmp_path, capsys):
    assert "checkpoint not found" in _cli_error(generate.main, [str(tmp_path / "none.pt")], capsys)
    assert "unknown modality 'smell'" in _cli_error(generate.main, [str(run_dir), "--given", "smell=x"], capsys)
    assert "file not found" in _cli_error(generate.main, [str(run_dir), "--given", "image=/no/such.png"], capsys)
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"garbage")
    assert "not a readable fastmmgan checkpoint" in _cli_error(generate.main, [str(corrupt)], capsys)


def test_divergence_exits_3_with_one_line_through_the_cli(tmp_path):
    """An absurd learning rate makes every update non-finite: the CLI stops after --max-bad-steps with exit 3."""
    args = [a if a != "6" else "40" for a in TINY]
    proc = subprocess.run([sys.executable, "-m", "fastmmgan.train", *args, "--lr", "1e38", "--d-lr", "1e38",
                           "--max-bad-steps", "3", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: training stopped at step 3: 3 non-finite updates in a row were skipped")
    assert "Traceback" not in proc.stderr


def test_cli_process_exit_code_and_single_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastmmgan.train", "--loss", "bce"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "fastmmgan.generate", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: checkpoint not found: {tmp_path / 'missing'}"]


def test_config_flag_re_runs_a_run_and_flags_override_it(run_dir, tmp_path):
    again = tmp_path / "again"
    assert train.main(["--config", str(run_dir / "config.json"), "--out", str(again), "--no-progress"]) == 0
    assert json.loads((again / "config.json").read_text()) == json.loads((run_dir / "config.json").read_text())
    a, b = load_checkpoint(run_dir), load_checkpoint(again)
    for name, tensor in a["ema"].items():
        assert torch.equal(b["ema"][name], tensor), name
    longer = tmp_path / "longer"
    assert train.main(["--config", str(run_dir / "config.json"), "--steps", "7", "--out", str(longer), "--no-progress"]) == 0
    saved = json.loads((longer / "config.json").read_text())
    assert saved == {**json.loads((run_dir / "config.json").read_text()), "steps": 7}


@pytest.mark.parametrize("content, message", [(None, "cannot read it"), ("{", "not a run config"),
                                              ('{"steps": "many"}', "steps: expected int"), ("[1]", "JSON object")])
def test_config_flag_errors(tmp_path, capsys, content, message):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    assert message in _cli_error(train.main, ["--config", str(path), "--out", str(tmp_path / "o")], capsys)


def test_data_without_out_writes_under_the_data_files_name(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "shapes.npz", pic=rng.random((40, 4, 4)).astype(np.float32),
             tag=np.array(["red square", "blue dot"] * 20), kinds=np.array(["pic=image", "tag=text"]))
    monkeypatch.chdir(tmp_path)
    assert train.main(["--data", "shapes.npz", "--steps", "2", "--batch-size", "8", "--g-width", "16", "--d-width", "16",
                       "--z-dim", "4", "--no-compile", "--no-progress", "--sample-every", "0"]) == 0
    assert (tmp_path / "runs" / "shapes" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "runs" / "digits").exists()
