"""Data as users have it on disk: folders (metadata.jsonl / metadata.csv, class subfolders) and Hugging Face
datasets, decoded once into the memory-mapped cache, with values checked against the files, bad files named
(file and row) or skipped, and a half-written cache never used."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from scipy import signal as sps

from fastmmgan import train
from fastmmgan.cli import run_cli
from fastmmgan.errors import FastMMGANError
from fastmmgan.prepare import AUDIO_WINDOWS, PrepareSettings, prepare

RNG = np.random.default_rng(0)


def _rgb(h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _tone(seconds, rate, freq=440.0, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([wave, 0.5 * wave], axis=1) if channels == 2 else wave


def _write_jsonl(folder: Path, rows: list[dict]) -> None:
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def mixed_folder(tmp_path):
    """Five rows: RGB, RGBA, palette, grey and 16-bit grey images of one size; WAV/FLAC clips at two rates, one
    stereo; one row without a caption and one without audio."""
    d = tmp_path / "mixed"
    d.mkdir()
    base = [_rgb(seed=i) for i in range(5)]
    Image.fromarray(base[0]).save(d / "im0.png")
    Image.fromarray(np.dstack([base[1], np.full((6, 5), 128, np.uint8)]), mode="RGBA").save(d / "im1.png")
    Image.fromarray(base[2]).convert("P").save(d / "im2.png")
    Image.fromarray(base[3][..., 0]).save(d / "im3.jpg", quality=100)
    Image.fromarray(base[4][..., 0].astype(np.uint16) * 257).save(d / "im4.png")
    sf.write(d / "a0.wav", _tone(0.2, 8000), 8000)
    sf.write(d / "a1.flac", _tone(0.4, 16000, 880.0, channels=2), 16000)
    sf.write(d / "a2.wav", _tone(0.2, 8000, 600.0), 8000, subtype="PCM_16")
    sf.write(d / "a3.ogg", _tone(0.2, 8000, 700.0), 8000)
    kinds = zip(["wav", "flac", "wav", "ogg"], ["red", "blue", "green", "red"], strict=True)
    rows = [{"image_file_name": f"im{i}.{'jpg' if i == 3 else 'png'}", "audio_file_name": f"a{i}.{ext}",
             "caption": f"a {c} thing"} for i, (ext, c) in enumerate(kinds)]
    rows[2]["caption"] = ""
    rows.append({"image_file_name": "im4.png", "caption": "a blue dot"})
    _write_jsonl(d, rows)
    return d, base


def _prep(data, tmp_path, **settings):
    return prepare(str(data), PrepareSettings(**settings), root=tmp_path / "cache", progress=False)


def _expected_wave(path, rate, clip):
    data, file_rate = sf.read(path, dtype="float32", always_2d=True)
    wave = data.mean(axis=1)
    if file_rate != rate:
        g = np.gcd(file_rate, rate)
        wave = sps.resample_poly(wave, rate // g, file_rate // g)
    out = np.zeros(clip, np.float32)
    start = max(0, (len(wave) - clip) // 2)
    piece = wave[start : start + clip]
    out[: len(piece)] = piece
    return out


def test_folder_values_match_the_files(mixed_folder, tmp_path):
    folder, base = mixed_folder
    p = _prep(folder, tmp_path)
    ds = p.dataset
    assert ds.names == ("image", "audio", "caption")
    image, audio, caption = ds.specs
    assert image.image_shape == (6, 5) and image.channels == 3  # colour: some files are
    # Every mode reaches RGB uint8 exactly as Pillow converts it; 16-bit grey is scaled, not clipped.
    pixels = ds.features[0][:].reshape(5, 6, 5, 3).numpy()
    np.testing.assert_array_equal(pixels[0] * 255, base[0])
    np.testing.assert_array_equal(pixels[1] * 255, base[1])  # alpha dropped
    palette = np.asarray(Image.open(folder / "im2.png").convert("RGB"))
    np.testing.assert_allclose(pixels[2] * 255, palette, atol=1e-3)
    grey16 = np.repeat(base[4][..., :1], 3, axis=2)
    np.testing.assert_allclose(pixels[4] * 255, grey16, atol=1e-3)
    # Audio: the most common rate (8 kHz), the median length (0.2 s); the 16 kHz stereo file mixed and resampled.
    assert audio.sample_rate == 8000 and audio.clip_samples == 1600
    for i, name in enumerate(["a0.wav", "a1.flac", "a2.wav", "a3.ogg"]):
        expected = audio.encode(_expected_wave(folder / name, 8000, 1600)[None])
        torch.testing.assert_close(ds.features[1][i : i + 1], expected, atol=2e-3, rtol=0, msg=name)
    # Missing parts are absent in the mask; the captions' bag of words.
    assert ds.mask.tolist() == [[True, True, True], [True, True, True], [True, True, False], [True, True, True],
                                [True, False, True]]
    assert caption.decode(ds.features[2][[0, 4]]) == ["a red thing", "a blue dot"]


def test_image_size_and_channels_flags(mixed_folder, tmp_path):
    folder, base = mixed_folder
    ds = _prep(folder, tmp_path, image_size=(3, 4), image_channels=1).dataset
    assert ds.specs[0].image_shape == (3, 4) and ds.specs[0].channels == 1
    expected = np.asarray(Image.fromarray(base[0]).convert("L").resize((4, 3), Image.LANCZOS), dtype=np.float32) / 255
    np.testing.assert_allclose(ds.features[0][0].reshape(3, 4).numpy(), expected, atol=1e-6)


def test_grey_files_make_a_grey_modality(tmp_path):
    d = tmp_path / "grey"
    d.mkdir()
    for i in range(3):
        Image.fromarray(_rgb(seed=i)[..., 0]).save(d / f"{i}.png")
    _write_jsonl(d, [{"file_name": f"{i}.png", "text": "x"} for i in range(3)])
    ds = _prep(d, tmp_path).dataset
    assert ds.specs[0].name == "image" and ds.specs[0].channels == 1 and ds.specs[0].dim == 30


def test_class_subfolders_pair_files_by_stem(tmp_path):
    d = tmp_path / "classes"
    (d / "cat").mkdir(parents=True)
    (d / "dog").mkdir()
    Image.fromarray(_rgb(seed=1)).save(d / "cat" / "1.png")
    sf.write(d / "cat" / "1.wav", _tone(0.1, 8000), 8000)
    Image.fromarray(_rgb(seed=2)).save(d / "dog" / "2.png")
    (d / "dog" / "notes.txt").write_text("ignored")
    ds = _prep(d, tmp_path).dataset
    assert ds.names == ("image", "audio", "text")
    assert ds.labels.tolist() == [0, 1]
    assert ds.specs[2].decode(ds.features[2][:]) == ["cat", "dog"]
    assert ds.mask.tolist() == [[True, True, True], [True, False, True]]
    np.testing.assert_array_equal(ds.features[0][1].reshape(6, 5, 3).numpy() * 255, _rgb(seed=2))


def test_csv_and_the_modalities_mapping(tmp_path):
    d = tmp_path / "csv"
    d.mkdir()
    for i in range(4):
        Image.fromarray(_rgb(seed=i)).save(d / f"p{i}.png")
    lines = ["photo_file_name,title,notes,label"] + [f"p{i}.png,a photo {i},note {i},{i % 2}" for i in range(4)]
    (d / "metadata.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(FastMMGANError, match="several caption columns"):
        _prep(d, tmp_path)
    ds = _prep(d, tmp_path, modalities="photo=image,title=text").dataset
    assert ds.names == ("photo", "title") and ds.labels.tolist() == [0, 1, 0, 1]
    assert ds.specs[1].decode(ds.features[1][[2]]) == ["a photo 2"]
    with pytest.raises(FastMMGANError, match="has no column 'speech'"):
        _prep(d, tmp_path, modalities="photo=image,speech=audio")
    with pytest.raises(FastMMGANError, match="holds image, not audio"):
        _prep(d, tmp_path, modalities="photo=audio")


def test_max_vocab_keeps_the_most_frequent_words(tmp_path, caplog):
    d = tmp_path / "words"
    d.mkdir()
    Image.fromarray(_rgb()).save(d / "x.png")
    _write_jsonl(d, [{"file_name": "x.png", "caption": c} for c in ["red cat", "red dog", "red cat", "blue fish"]])
    p = _prep(d, tmp_path, max_vocab=2)
    assert p.dataset.specs[1].vocab == ("red", "cat")
    assert p.notes["captions"]["caption"] == {"vocab": 2, "words_seen": 5, "dropped_words": 3, "dropped_occurrences": 3}
    assert p.dataset.mask[:, 1].tolist() == [True, True, True, False]  # "blue fish" has no kept word
    assert "keeps 2 of 5 words" in caplog.text


def test_hf_dataset_on_disk_matches_the_folder(mixed_folder, tmp_path):
    import datasets
    folder, _ = mixed_folder
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    table = {"picture": [str(folder / r["image_file_name"]) for r in rows],
             "sound": [str(folder / r["audio_file_name"]) if "audio_file_name" in r else None for r in rows],
             "caption": [r["caption"] or None for r in rows]}
    hf = datasets.Dataset.from_dict(table).cast_column("picture", datasets.Image()).cast_column("sound", datasets.Audio())
    hf.save_to_disk(str(tmp_path / "saved"))
    from_hf = _prep(f"hf:{tmp_path / 'saved'}", tmp_path).dataset
    from_folder = _prep(folder, tmp_path).dataset
    assert from_hf.names == ("picture", "sound", "caption")
    assert torch.equal(from_hf.mask, from_folder.mask)
    for a, b in zip(from_hf.features, from_folder.features, strict=True):
        torch.testing.assert_close(a[:], b[:])
    # A folder of parquet files, with a class label and no caption column: the label names become captions.
    labelled = datasets.Dataset.from_dict({"img": table["picture"], "label": [0, 1, 1, 0, 1]}).cast_column(
        "img", datasets.Image()).cast_column("label", datasets.ClassLabel(names=["odd", "even"]))
    (tmp_path / "pq").mkdir()
    labelled.to_parquet(str(tmp_path / "pq" / "part0.parquet"))
    ds = _prep(f"hf:{tmp_path / 'pq'}", tmp_path).dataset
    assert ds.labels.tolist() == [0, 1, 1, 0, 1] and ds.specs[1].decode(ds.features[1][[0, 1]]) == ["odd", "even"]
    torch.testing.assert_close(ds.features[0][:], from_folder.features[0][:])


def test_second_run_reuses_the_cache_and_a_changed_file_rebuilds_it(mixed_folder, tmp_path):
    folder, _ = mixed_folder
    first = _prep(folder, tmp_path)
    again = _prep(folder, tmp_path)
    assert not first.reused and again.reused and again.cache_dir == first.cache_dir
    torch.testing.assert_close(again.dataset.features[0][:], first.dataset.features[0][:])
    Image.fromarray(_rgb(seed=9)).save(folder / "im0.png")
    os.utime(folder / "im0.png", ns=(1, 1))
    changed = _prep(folder, tmp_path)
    assert not changed.reused and changed.cache_dir != first.cache_dir
    np.testing.assert_array_equal(changed.dataset.features[0][0].reshape(6, 5, 3).numpy() * 255, _rgb(seed=9))
    # Other settings, another cache.
    assert _prep(folder, tmp_path, image_channels=1).cache_dir != first.cache_dir


def test_a_cache_without_its_manifest_is_rebuilt(mixed_folder, tmp_path):
    folder, _ = mixed_folder
    first = _prep(folder, tmp_path)
    (first.cache_dir / "manifest.json").unlink()
    np.save(first.cache_dir / "modality0.npy", np.zeros((5, 6, 5, 3), np.uint8))  # what a broken copy might hold
    again = _prep(folder, tmp_path)
    assert not again.reused
    np.testing.assert_array_equal(again.dataset.features[0][0].reshape(6, 5, 3).numpy() * 255, _rgb(seed=0))


def test_a_preparation_killed_half_way_is_never_used(tmp_path):
    """A real SIGKILL while the files are being decoded: one file is a named pipe that answers the header scan
    and then blocks the decoding pass, so the kill lands with part of the arrays written."""
    d = tmp_path / "many"
    d.mkdir()
    img = _rgb(32, 32)
    for i in range(300):
        Image.fromarray(np.roll(img, i, axis=0)).save(d / f"{i}.png")
    _write_jsonl(d, [{"file_name": f"{i}.png", "caption": f"row {i % 7}"} for i in range(300)])
    blocker = d / "200.png"
    png = blocker.read_bytes()
    blocker.unlink()
    os.mkfifo(blocker)
    cache = tmp_path / "cache"
    code = (f"from fastmmgan.prepare import prepare, PrepareSettings; "
            f"prepare({str(d)!r}, PrepareSettings(), root={str(cache)!r}, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        with open(blocker, "wb") as f:  # the header scan's read; the decoding pass then waits for a writer
            f.write(png)
        deadline = time.time() + 120
        while not list((cache / "prepared").glob(".*.tmp/modality0.npy")) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert proc.poll() is None, "the preparation did not wait at the pipe"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list((cache / "prepared").glob(".*.tmp/modality0.npy"))  # killed half-way
    assert not [p for p in (cache / "prepared").iterdir() if not p.name.startswith(".")]
    blocker.unlink()
    blocker.write_bytes(png)
    p = _prep(d, tmp_path)
    assert not p.reused and len(p.dataset) == 300
    assert not list((cache / "prepared").glob(".*.tmp"))  # the killed process's folder is cleaned up
    for i in (0, 200, 299):
        np.testing.assert_array_equal(p.dataset.features[0][i].reshape(32, 32, 3).numpy() * 255, np.roll(img, i, axis=0))


# -- bad input: one line naming the file and row, exit 2 -------------------------------------------------------

def _bad_folder(tmp_path, case):
    """A three-row folder damaged as ``case`` says: (folder, the file or place the error must name, the row)."""
    d = tmp_path / case
    d.mkdir()
    for i in range(3):
        Image.fromarray(_rgb(24, 24, seed=i)).save(d / f"{i}.png")
        sf.write(d / f"{i}.wav", _tone(0.1, 8000), 8000)
    rows = [{"image_file_name": f"{i}.png", "audio_file_name": f"{i}.wav", "caption": "a cat"} for i in range(3)]
    _write_jsonl(d, rows)
    if case == "unreadable-image":
        (d / "1.png").write_bytes(b"not a png at all")
    elif case == "truncated-image":
        (d / "1.png").write_bytes((d / "1.png").read_bytes()[:300])
    elif case == "unreadable-audio":
        (d / "1.wav").write_bytes(b"RIFF....WAVEjunk")
        return d, "1.wav", "line 2"
    elif case == "missing-file":
        rows[1]["image_file_name"] = "gone.png"
        _write_jsonl(d, rows)
        return d, "gone.png", "line 2"
    elif case == "other-size":
        Image.fromarray(_rgb(7, 5)).save(d / "2.png")
        return d, "2.png", "--image-size"
    elif case == "bad-json":
        (d / "metadata.jsonl").write_text(json.dumps(rows[0]) + "\n{oops\n")
        return d, "metadata.jsonl line 2", "not valid JSON"
    elif case == "ragged-csv":
        (d / "metadata.jsonl").unlink()
        (d / "metadata.csv").write_text("file_name,caption\n0.png,a cat\n1.png,a cat,extra\n")
        return d, "metadata.csv row 3", "3 fields where the header has 2"
    elif case == "file-names-in-a-text-column":
        (d / "metadata.jsonl").unlink()
        (d / "metadata.csv").write_text("filename,caption\n0.png,a cat\n1.png,a dog\n")
        return d, "metadata.csv", "column 'filename' holds file names"
    elif case == "empty-folder":
        return d.parent / "empty", "empty", "no metadata.jsonl or metadata.csv"
    return d, "1.png", "line 2"


BAD_CASES = ["unreadable-image", "truncated-image", "unreadable-audio", "missing-file", "other-size", "bad-json",
             "ragged-csv", "file-names-in-a-text-column", "empty-folder"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_naming_the_file_and_row(tmp_path, case):
    folder, name, where = _bad_folder(tmp_path, case)
    if case == "empty-folder":
        folder.mkdir()
    with pytest.raises(FastMMGANError) as info:
        _prep(folder, tmp_path)
    message = str(info.value)
    assert name in message and where in message and "\n" not in message, message
    prepared = tmp_path / "cache" / "prepared"
    assert not prepared.exists() or not [p for p in prepared.iterdir() if not p.name.endswith(".lock")], \
        "a half-written cache was left behind"


def test_bad_input_through_the_cli_exits_2_with_one_line(tmp_path, capsys):
    folder, name, _ = _bad_folder(tmp_path, "truncated-image")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train.main(["--data", str(folder), "--out", str(tmp_path / "run"), "--no-progress",
                                    "--cache-dir", str(tmp_path / "cache")]))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: ") and "\n" not in err and name in err


def test_skip_bad_files_leaves_them_out_and_lists_them(tmp_path):
    folder, _, _ = _bad_folder(tmp_path, "unreadable-image")
    (folder / "2.wav").write_bytes(b"garbage")
    out = tmp_path / "run"
    assert train.main(["--data", str(folder), "--out", str(out), "--skip-bad-files", "--steps", "2", "--batch-size", "2",
                       "--g-width", "16", "--d-width", "16", "--z-dim", "4", "--no-compile", "--no-progress",
                       "--sample-every", "0", "--cache-dir", str(tmp_path / "cache"), "--test-fraction", "0.34"]) == 0
    listed = [json.loads(line) for line in (out / "bad_files.jsonl").read_text().splitlines()]
    assert sorted(Path(r["file"]).name for r in listed) == ["1.png", "2.wav"]
    assert all("line" in r["row"] and r["reason"] for r in listed)
    ds = _prep(folder, tmp_path, skip_bad_files=True).dataset
    assert ds.mask.tolist() == [[True, True, True], [False, True, True], [True, False, True]]
    np.testing.assert_array_equal(ds.features[0][2].reshape(24, 24, 3).numpy() * 255, _rgb(24, 24, seed=2))


# -- audio crops -----------------------------------------------------------------------------------------------

def test_audio_is_cropped_at_random_in_training_and_at_the_centre_otherwise(tmp_path):
    d = tmp_path / "long"
    d.mkdir()
    rate, clip = 8000, 800
    # A 0.5 s clip whose frequency rises with time, so every window has its own spectrum.
    t = np.arange(4000) / rate
    sf.write(d / "chirp.wav", 0.5 * np.sin(2 * np.pi * (200 + 1500 * t) * t), rate)
    sf.write(d / "short.wav", _tone(0.05, rate), rate)
    _write_jsonl(d, [{"file_name": "chirp.wav", "caption": "up"}, {"file_name": "short.wav", "caption": "beep"}])
    ds = _prep(d, tmp_path, clip_seconds=0.1).dataset
    col, spec = ds.features[0], ds.specs[0]
    assert spec.clip_samples == clip
    stored = _expected_wave(d / "chirp.wav", rate, AUDIO_WINDOWS * clip)  # the file's centre 3200 samples
    centre = stored[(len(stored) - clip) // 2 :][:clip]
    torch.testing.assert_close(col[[0]], spec.encode(centre[None]), atol=2e-3, rtol=0)
    starts = set()
    for seed in range(6):
        drawn = col.draw(torch.tensor([0]), torch.Generator().manual_seed(seed))
        errors = [(drawn - spec.encode(stored[s : s + clip][None])).abs().max().item() for s in range(0, 2401)]
        best = int(np.argmin(errors))
        assert errors[best] < 2e-3
        starts.add(best)
    assert len(starts) >= 4  # different crops, not the centre every time
    # A clip shorter than the window is padded, the same in training and evaluation.
    torch.testing.assert_close(col.draw(torch.tensor([1]), torch.Generator().manual_seed(0)), col[[1]])


def test_two_processes_preparing_the_same_data_build_it_once(tmp_path):
    """Two runs started together (torchrun's ranks, a seed sweep): the first to take the cache's lock prepares,
    the other waits for it, then opens the same cache."""
    d = tmp_path / "shared"
    d.mkdir()
    img = _rgb(32, 32)
    for i in range(3000):
        Image.fromarray(np.roll(img, i, axis=1)).save(d / f"{i}.png", compress_level=1)
    _write_jsonl(d, [{"file_name": f"{i}.png", "caption": "a thing"} for i in range(3000)])
    code = (f"from fastmmgan.prepare import prepare, PrepareSettings; "
            f"p = prepare({str(d)!r}, PrepareSettings(), root={str(tmp_path / 'cache')!r}, progress=False); "
            f"print(p.reused, p.cache_dir, int(p.dataset.features[0][2999].sum() * 255))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(o[0] for o in outs) == ["False", "True"]  # built once, reused once
    assert outs[0][1:] == outs[1][1:] and int(outs[0][2]) == int(np.roll(img, 2999, axis=1).astype(np.int64).sum())


@pytest.mark.parametrize("content, message", [
    (b"file_name,caption\n0.png,caf\xe9\n", "not UTF-8 text"),
    (b"file_name,caption,label\n0.png,a cat,--1\n", "label must be an integer, got '--1'"),
    (b"file_name,caption,label\n0.png,a cat,100000000000000000000\n", "label must be an integer"),
    (b"file_name,image\n0.png,a cat\n", "two modalities would be named 'image'"),
])
def test_metadata_problems_are_one_line(tmp_path, content, message):
    d = tmp_path / "m"
    d.mkdir()
    Image.fromarray(_rgb()).save(d / "0.png")
    (d / "metadata.csv").write_bytes(content)
    with pytest.raises(FastMMGANError, match=message) as info:
        _prep(d, tmp_path)
    assert "\n" not in str(info.value)


def test_a_spreadsheets_byte_order_mark_is_not_part_of_the_header(tmp_path):
    d = tmp_path / "bom"
    d.mkdir()
    Image.fromarray(_rgb()).save(d / "0.png")
    (d / "metadata.csv").write_bytes("file_name,caption\n0.png,a cat\n".encode("utf-8-sig"))
    assert _prep(d, tmp_path).dataset.names == ("image", "caption")


def test_hf_dataset_naming_files_sees_them_change(tmp_path):
    """A dataset that stores paths, not bytes (parquet written by pyarrow, as other tools write it): a changed
    file prepares a new cache (its size and time are in the key), and relative paths are read against the
    dataset's folder."""
    import datasets
    import pyarrow.parquet as pq

    saved = tmp_path / "saved"
    saved.mkdir()
    for i in range(3):
        Image.fromarray(_rgb(seed=i)).save(saved / f"{i}.png")
    features = datasets.Features({"image": datasets.Image(decode=False), "caption": datasets.Value("string")})
    hf = datasets.Dataset.from_dict({"image": [{"bytes": None, "path": f"{i}.png"} for i in range(3)],
                                     "caption": ["a", "b c", "d"]}, features=features)
    pq.write_table(hf.data.table, saved / "part.parquet")
    first = _prep(f"hf:{saved}", tmp_path)
    np.testing.assert_array_equal(first.dataset.features[0][1].reshape(6, 5, 3).numpy() * 255, _rgb(seed=1))
    Image.fromarray(_rgb(seed=7)).save(saved / "1.png")
    os.utime(saved / "1.png", ns=(5, 5))
    second = _prep(f"hf:{saved}", tmp_path)
    assert not second.reused and second.cache_dir != first.cache_dir
    np.testing.assert_array_equal(second.dataset.features[0][1].reshape(6, 5, 3).numpy() * 255, _rgb(seed=7))


def test_hf_parquet_files_of_several_splits_train_on_the_train_split(tmp_path):
    import datasets

    (tmp_path / "hub" / "data").mkdir(parents=True)
    for split, words in (("train", ["red", "green"]), ("test", ["blue", "blue"])):
        out = tmp_path / "hub" / "data" / f"{split}-00000-of-00001.parquet"
        datasets.Dataset.from_dict({"caption": words}).to_parquet(str(out))
    ds = _prep(f"hf:{tmp_path / 'hub'}", tmp_path).dataset
    assert ds.specs[0].vocab == ("red", "green")
    (tmp_path / "hub" / "data" / "train-00000-of-00001.parquet").unlink()
    with pytest.raises(FastMMGANError, match=r"split files without a train split \(test\)"):
        _prep(f"hf:{tmp_path / 'hub'}", tmp_path)


def test_hf_class_label_missing_is_named(tmp_path):
    import datasets

    hf = datasets.Dataset.from_dict({"caption": ["a", "b"], "label": [0, -1]}).cast_column(
        "label", datasets.ClassLabel(names=["x", "y"]))
    hf.save_to_disk(str(tmp_path / "s"))
    with pytest.raises(FastMMGANError, match=r"row 1: label is -1, not one of its 2 classes"):
        _prep(f"hf:{tmp_path / 's'}", tmp_path)


def test_a_long_clip_at_another_rate_keeps_its_centre_filtered_whole(tmp_path):
    """A 2 s 48 kHz file stored as four 0.125 s windows at 8 kHz: the same samples as resampling the whole file
    and cutting out its centre (the cut before resampling keeps the filter's reach on both sides)."""
    from fastmmgan.file_readers import read_audio

    rng = np.random.default_rng(0)
    wave = np.clip(rng.normal(0, 0.2, 96000), -1, 1)
    sf.write(tmp_path / "long.wav", wave, 48000, subtype="FLOAT")
    got = read_audio(tmp_path / "long.wav", 8000, max_samples=4000)
    whole = sps.resample_poly(wave.astype(np.float32), 1, 6)
    centre = (len(whole) - 4000) // 2
    assert got.shape == (4000,)
    errors = {s: np.abs(got - np.clip(whole[s : s + 4000], -1, 1)).max() for s in range(centre - 3, centre + 4)}
    assert min(errors.values()) < 1e-5, errors  # a window of the whole file's samples, at its centre


def test_clips_that_fit_one_window_are_stored_as_their_features(tmp_path):
    """Nothing to crop: the spectrogram features are computed once, at preparation, and stored as float16 (within
    1e-3 of float32's); a folder with one longer clip keeps waveforms, cropped per batch."""
    from fastmmgan.feature_store import StoredFeatures, WaveColumn

    d = tmp_path / "short"
    d.mkdir()
    for i, seconds in enumerate([0.1, 0.08, 0.1]):
        sf.write(d / f"{i}.wav", _tone(seconds, 8000, 400.0 + 100 * i), 8000)
    _write_jsonl(d, [{"file_name": f"{i}.wav", "caption": "beep"} for i in range(3)])
    ds = _prep(d, tmp_path, clip_seconds=0.1).dataset
    col, spec = ds.features[0], ds.specs[0]
    assert isinstance(col, StoredFeatures) and col.storage.dtype == torch.float16
    for i in range(3):
        expected = spec.encode(_expected_wave(d / f"{i}.wav", 8000, 800)[None])
        torch.testing.assert_close(col[[i]], expected, atol=1e-3, rtol=0)
        torch.testing.assert_close(col.draw(torch.tensor([i]), torch.Generator().manual_seed(0)), col[[i]])
    sf.write(d / "3.wav", _tone(0.3, 8000), 8000)
    _write_jsonl(d, [{"file_name": f"{i}.wav", "caption": "beep"} for i in range(4)])
    assert isinstance(_prep(d, tmp_path, clip_seconds=0.1).dataset.features[0], WaveColumn)
