"""Preparing a dataset from files: decode every file once into a cache of memory-mapped arrays.

A table (see :mod:`fastmmgan.tables`) is read in two passes, each with a progress bar: a scan of the
headers (image sizes and modes, audio rates and lengths) and the captions' words, which fixes the
modality specs, then the decoding of every file into ``.npy`` arrays: images as uint8 [N, H, W, C],
captions as uint8 bags of words [N, V], audio as float16 waveforms [N, L] with their lengths (up to
:data:`AUDIO_WINDOWS` windows of each clip, for random crops) or, where every clip fits in one window (so
there is nothing to crop), as its float16 spectrogram features [N, dim], the presence mask and the labels.

The cache lives in ``<cache>/prepared/<key>``, the key a hash of the files (names, sizes, modification
times), the metadata and the preparation settings; a second run with the same data and settings opens it
without decoding anything. It is built in a temporary folder and renamed into place when complete, so a
preparation killed half-way leaves nothing that a later run would use (it is rebuilt).

Training reads its batches from the memory maps (:mod:`fastmmgan.feature_store`): the dataset never has to
fit in memory as float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import atomic_write_bytes, file_lock
from .data import MultimodalDataset, audio_spec
from .errors import FastMMGANError
from .feature_store import PixelColumn, StoredFeatures, WaveColumn
from .file_readers import BadFile, audio_info, image_info, read_audio, read_image
from .modalities import ModalitySpec, tokenize
from .tables import Modality, Table, open_table, parse_mapping, pick_modalities

log = logging.getLogger("fastmmgan.prepare")

CACHE_VERSION = 2
AUDIO_WINDOWS = 4
"""A stored clip keeps up to this many windows (``clip_samples``) of the file's centre: room for random crops."""
AUDIO_STORE_DTYPE = np.float16
"""Waveforms are stored as float16: their spectrogram features differ from float32's by under 1e-3 (the
features' floor is about -50 dB of full scale, float16's rounding about -66 dB)."""
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PrepareSettings:
    """How files become features (each a ``python -m fastmmgan.train`` flag; None: the data's own)."""

    modalities: str | None = None
    image_size: tuple[int, ...] | None = None
    image_channels: int | None = None
    sample_rate: int | None = None
    clip_seconds: float | None = None
    max_vocab: int = 1000
    skip_bad_files: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> PrepareSettings:
        """The settings a :class:`~fastmmgan.config.TrainConfig` names (fields of the same names)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})

    def image_hw(self) -> tuple[int, int] | None:
        if self.image_size is None:
            return None
        size = tuple(int(v) for v in self.image_size)
        return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


@dataclass
class Prepared:
    """A prepared dataset and what its preparation found."""

    dataset: MultimodalDataset
    cache_dir: Path
    reused: bool
    bad_files: list[list[str]]
    notes: dict[str, Any]


def cache_root(path: str | None = None) -> Path:
    """Where prepared datasets are kept: ``path``, else ``$FASTMMGAN_CACHE``, else ``~/.cache/fastmmgan``."""
    if path:
        return Path(path)
    if os.environ.get("FASTMMGAN_CACHE"):
        return Path(os.environ["FASTMMGAN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastmmgan"


# -- the scan: specs from headers and words -----------------------------------------------------------------

class _Problems:
    """Bad files: an error at the first (the default) or a list (``--skip-bad-files``)."""

    def __init__(self, table: Table, skip: bool) -> None:
        self.table, self.skip, self.found = table, skip, {}

    def bad(self, i: int, column: str, reason: str) -> None:
        where = self.table.where(i)
        cell = self.table.cells[column][i]
        name = str(cell) if isinstance(cell, (str, Path)) else f"{column} (embedded bytes)"
        if not self.skip:
            place = "" if name in where else f" ({where})"
            raise FastMMGANError(f"{name}{place}: {reason} (--skip-bad-files skips such files)")
        self.found[(i, column)] = [name, where, reason]


def _bar(total: int, desc: str, progress: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="file", disable=not progress, leave=False, mininterval=0.5)


def _headers(table: Table, mod: Modality, read: Callable[[Any], Any], problems: _Problems,
             bar: tqdm) -> Iterator[tuple[int, Any, Any]]:
    """(row, cell, header) of each present, readable file of a column; unreadable ones go to ``problems``."""
    for i, cell in enumerate(table.cells[mod.column]):
        if cell is None:
            continue
        bar.update(1)
        try:
            yield i, cell, _checked(cell, read)
        except BadFile as e:
            problems.bad(i, mod.column, str(e))


def _scan_images(table: Table, mod: Modality, settings: PrepareSettings, problems: _Problems,
                 bar: tqdm) -> ModalitySpec:
    size = settings.image_hw()
    first: tuple[int, tuple[int, int]] | None = None
    all_grey = True
    for i, cell, info in _headers(table, mod, image_info, problems, bar):
        all_grey &= info.grey
        if first is None:
            first = (i, info.size)
        elif size is None and info.size != first[1]:
            h, w = info.size
            fh, fw = first[1]
            raise FastMMGANError(f"{cell} ({table.where(i)}): image of {h}x{w} where {table.where(first[0])} is {fh}x{fw}; "
                                 "give --image-size H[,W] to resize every image")
    if first is None:
        raise FastMMGANError(f"{table.source}: modality {mod.name!r} has no readable image")
    channels = settings.image_channels or (1 if all_grey else 3)
    return ModalitySpec(mod.name, "image", image_shape=size or first[1], channels=channels)


def _scan_audio(table: Table, mod: Modality, settings: PrepareSettings, problems: _Problems,
                bar: tqdm) -> tuple[ModalitySpec, str]:
    """The audio spec, and how its rows are stored: ``spectrograms`` when every clip fits in one window (there is
    nothing to crop, so the features are computed once), else ``waves`` (cropped per batch)."""
    rates: Counter[int] = Counter()
    clips = []
    for _, _, info in _headers(table, mod, audio_info, problems, bar):
        rates[info.sample_rate] += 1
        clips.append(info)
    if not rates:
        raise FastMMGANError(f"{table.source}: modality {mod.name!r} has no readable audio file")
    rate = settings.sample_rate or rates.most_common(1)[0][0]
    clip = settings.clip_seconds or float(np.median([c.frames / c.sample_rate for c in clips]))
    samples = max(16, int(round(clip * rate)))
    fits = all(math.ceil(c.frames * rate / c.sample_rate) <= samples for c in clips)
    return audio_spec(mod.name, rate, samples), "spectrograms" if fits else "waves"


def _scan_text(table: Table, mod: Modality, settings: PrepareSettings) -> tuple[ModalitySpec, dict[str, Any]]:
    counts: Counter[str] = Counter()
    for cell in table.cells[mod.column]:
        if cell is not None:
            counts.update(tokenize(str(cell)))
    if not counts:
        raise FastMMGANError(f"{table.source}: modality {mod.name!r}: the captions contain no words")
    keep = {w for w, _ in counts.most_common(settings.max_vocab)} if settings.max_vocab else set(counts)
    vocab = tuple(w for w in counts if w in keep)  # first-appearance order: decoded captions read naturally
    dropped = {w: c for w, c in counts.items() if w not in keep}
    note = {"vocab": len(vocab), "words_seen": len(counts), "dropped_words": len(dropped),
            "dropped_occurrences": int(sum(dropped.values()))}
    if dropped:
        log.warning("%s: --max-vocab %d keeps %d of %d words; %d occurrences of %d rarer words are dropped",
                    mod.name, settings.max_vocab, len(vocab), len(counts), note["dropped_occurrences"], len(dropped))
    return ModalitySpec(mod.name, "text", vocab=vocab), note


def _checked(cell: Any, read: Callable[[Any], Any]) -> Any:
    if isinstance(cell, Path) and not cell.exists():
        raise BadFile("file not found")
    return read(cell)


# -- the decoding pass --------------------------------------------------------------------------------------

def _stored_shape(spec: ModalitySpec, storage: str) -> tuple[tuple[int, ...], Any]:
    """Shape of one stored row and its dtype, by storage (``pixels``, ``bags``, ``waves``, ``spectrograms``)."""
    if storage == "pixels":
        h, w = spec.image_shape
        return (h, w, spec.channels), np.uint8
    if storage == "bags":
        return (len(spec.vocab),), np.uint8
    if storage == "spectrograms":
        return (spec.dim,), AUDIO_STORE_DTYPE
    return (AUDIO_WINDOWS * spec.clip_samples,), AUDIO_STORE_DTYPE


def _decode_cell(spec: ModalitySpec, storage: str, cell: Any, index: dict[str, int] | None) -> tuple[np.ndarray, int]:
    """One cell as its stored row (and, for audio, its length in samples)."""
    if storage == "pixels":
        return _checked(cell, lambda c: read_image(c, spec.image_shape, spec.channels)), 0
    if storage == "bags":
        bag = np.zeros(len(spec.vocab), dtype=np.uint8)
        bag[[index[w] for w in tokenize(str(cell)) if w in index]] = 1
        return bag, 0
    wave = _checked(cell, lambda c: read_audio(c, spec.sample_rate, AUDIO_WINDOWS * spec.clip_samples))
    if storage == "spectrograms":  # a clip that fits in its window: zero-padded (its features are taken in batches)
        return np.pad(wave, (0, spec.clip_samples - len(wave))), len(wave)
    return wave, len(wave)


SPECTROGRAM_BATCH = 256
"""Clips whose features are computed in one batched STFT while a dataset is prepared."""


def _build(table: Table, mods: list[Modality], specs: list[ModalitySpec], storage: list[str], problems: _Problems,
           tmp: Path, files: int, progress: bool) -> dict[str, Any]:
    n, m = len(table), len(mods)
    layouts = [_stored_shape(spec, kept) for spec, kept in zip(specs, storage, strict=True)]
    need = sum(n * int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in layouts)
    free = shutil.disk_usage(tmp).free
    if need > free:
        raise FastMMGANError(f"the prepared dataset needs {need / 1e9:.2f} GB and {tmp.parent} has {free / 1e9:.2f} GB "
                             "free; point --cache-dir (or $FASTMMGAN_CACHE) at a larger disk")
    arrays = {k: np.lib.format.open_memmap(tmp / f"modality{k}.npy", mode="w+", dtype=dtype, shape=(n, *shape))
              for k, (shape, dtype) in enumerate(layouts)}
    lengths = np.zeros((n, m), dtype=np.int64)
    mask = np.zeros((n, m), dtype=bool)
    indexes = [{w: j for j, w in enumerate(s.vocab)} if s.kind == "text" else None for s in specs]
    pending: dict[int, list[tuple[int, np.ndarray]]] = {k: [] for k, kept in enumerate(storage) if kept == "spectrograms"}

    def spectrograms(k: int) -> None:
        """Features of modality k's pending clips, in one batch."""
        if pending[k]:
            rows, waves = zip(*pending[k], strict=True)
            arrays[k][list(rows)] = specs[k].encode(np.stack(waves)).numpy()
            pending[k].clear()

    t0 = time.perf_counter()
    with _bar(files, "decode", progress) as bar:
        for i in range(n):
            for k, (mod, spec) in enumerate(zip(mods, specs, strict=True)):
                cell = table.cells[mod.column][i]
                if cell is None or (i, mod.column) in problems.found:
                    continue
                try:
                    row, length = _decode_cell(spec, storage[k], cell, indexes[k])
                except BadFile as e:
                    problems.bad(i, mod.column, str(e))
                    continue
                finally:
                    if spec.kind != "text":
                        bar.update(1)
                if k in pending:
                    pending[k].append((i, row))
                    lengths[i, k] = length
                    if len(pending[k]) == SPECTROGRAM_BATCH:
                        spectrograms(k)
                elif spec.kind == "audio":
                    arrays[k][i, : len(row)] = row
                    lengths[i, k] = length
                elif spec.kind == "image" or row.any():
                    arrays[k][i] = row
                mask[i, k] = spec.kind != "text" or bool(row.any())
    for k in pending:
        spectrograms(k)
    seconds = time.perf_counter() - t0
    for arr in arrays.values():
        arr.flush()
    np.save(tmp / "mask.npy", mask)
    np.save(tmp / "lengths.npy", lengths)
    if table.labels is not None:
        np.save(tmp / "labels.npy", np.asarray(table.labels, dtype=np.int64))
    return {"files": files, "decode_seconds": round(seconds, 3), "files_per_s": round(files / max(seconds, 1e-9), 1)}


def _key(table: Table, mods: list[Modality], settings: PrepareSettings) -> str:
    blob = json.dumps({"version": CACHE_VERSION, "table": table.fingerprint, "settings": dataclasses.asdict(settings),
                       "modalities": [dataclasses.asdict(m) for m in mods]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _key_lock(folder: Path, key: str, wait: bool = True) -> contextlib.AbstractContextManager[bool]:
    """The lock of one cache key (``.<key>.lock``), held by the process that checks, builds and renames that cache:
    a second process (another torchrun rank, another run of the same data) waits, then finds the cache complete."""
    return file_lock(folder / f".{key}.lock", wait)


def _remove_stale(folder: Path) -> None:
    """Temporary folders of killed preparations: those whose key's lock nobody holds."""
    for tmp in folder.glob(".*.tmp"):
        with _key_lock(folder, tmp.name[1:-4], wait=False) as free:
            if free:
                shutil.rmtree(tmp, ignore_errors=True)


def _open(cache: Path) -> tuple[MultimodalDataset, dict[str, Any]]:
    """A complete cache as a dataset over its memory maps."""
    manifest = json.loads((cache / MANIFEST).read_text())
    specs = tuple(ModalitySpec.from_dict(s) for s in manifest["specs"])
    mask = torch.from_numpy(np.load(cache / "mask.npy"))
    lengths = torch.from_numpy(np.load(cache / "lengths.npy"))
    columns = []
    for k, (spec, kept) in enumerate(zip(specs, manifest["storage"], strict=True)):
        # Copy-on-write maps: writable views for torch, pages shared with the file until (never) written.
        storage = torch.from_numpy(np.load(cache / f"modality{k}.npy", mmap_mode="c"))
        if kept == "pixels":
            columns.append(PixelColumn(spec, storage))
        elif kept == "waves":
            columns.append(WaveColumn(spec, storage, lengths[:, k].clone()))
        else:
            columns.append(StoredFeatures(spec, storage))
    labels = torch.from_numpy(np.load(cache / "labels.npy")) if (cache / "labels.npy").is_file() else None
    keep = torch.nonzero(mask.any(dim=1), as_tuple=True)[0]  # rows whose every file was bad are left out
    ds = MultimodalDataset(specs, tuple(columns), mask, labels)
    return (ds if len(keep) == len(mask) else ds.subset(keep)), manifest


def _complete(cache: Path) -> bool:
    if not (cache / MANIFEST).is_file():
        return False
    try:
        manifest = json.loads((cache / MANIFEST).read_text())
        return manifest.get("version") == CACHE_VERSION and all((cache / f).is_file() for f in manifest["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def prepare(data: str, settings: PrepareSettings = PrepareSettings(), root: str | Path | None = None,
            progress: bool = True) -> Prepared:
    """The dataset in ``data`` (a folder or ``hf:PATH``), prepared once into the cache under ``root`` (see
    :func:`cache_root`) and opened from there. One-line :class:`FastMMGANError` for bad input, naming the file
    and row; with ``settings.skip_bad_files`` bad files are left out (the row keeps its other modalities)
    and listed in :attr:`Prepared.bad_files`."""
    table = open_table(data)
    mods = pick_modalities(table, parse_mapping(settings.modalities))
    if len(table) == 0:
        raise FastMMGANError(f"{table.source}: the dataset is empty")
    folder = cache_root(str(root) if root else None) / "prepared"
    key = _key(table, mods, settings)
    cache = folder / key
    if _complete(cache):
        return _prepared(cache, reused=True)
    folder.mkdir(parents=True, exist_ok=True)
    with _key_lock(folder, key):
        if _complete(cache):  # another process prepared it while this one waited
            return _prepared(cache, reused=True)
        _build_cache(table, mods, settings, folder, key, progress)
    _remove_stale(folder)
    return _prepared(cache, reused=False)


def _prepared(cache: Path, reused: bool) -> Prepared:
    ds, manifest = _open(cache)
    return Prepared(ds, cache, reused, manifest["bad_files"], manifest["notes"])


def _build_cache(table: Table, mods: list[Modality], settings: PrepareSettings, folder: Path, key: str,
                 progress: bool) -> None:
    """Scan, decode and write the cache ``folder/key`` through a temporary folder (the caller holds the key's lock)."""
    cache, tmp = folder / key, folder / f".{key}.tmp"
    if cache.exists():  # a cache without its manifest: never complete, so never used
        log.warning("rebuilding the incomplete prepared dataset %s", cache)
        shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)  # a killed preparation of this key (its lock is ours now)
    tmp.mkdir()
    try:
        problems = _Problems(table, settings.skip_bad_files)
        notes: dict[str, Any] = {"captions": {}}
        specs, storage = [], []
        files = _file_count(table, mods)  # counted once: an hf: file column reads its rows to count them
        with _bar(files, "scan", progress) as bar:
            for mod in mods:
                if mod.kind == "image":
                    specs.append(_scan_images(table, mod, settings, problems, bar))
                    storage.append("pixels")
                elif mod.kind == "audio":
                    spec, kept = _scan_audio(table, mod, settings, problems, bar)
                    specs.append(spec)
                    storage.append(kept)
                else:
                    spec, notes["captions"][mod.name] = _scan_text(table, mod, settings)
                    specs.append(spec)
                    storage.append("bags")
        notes["decode"] = _build(table, mods, specs, storage, problems, tmp, files, progress)
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {"version": CACHE_VERSION, "source": table.source, "rows": len(table),
                    "specs": [s.to_dict() for s in specs], "storage": storage, "files": files,
                    "bad_files": list(problems.found.values()), "notes": notes}
        atomic_write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        os.replace(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _file_count(table: Table, mods: list[Modality]) -> int:
    """Files to read (image and audio cells present), for the progress bars."""
    return sum(1 for mod in mods if mod.kind != "text" for c in table.cells[mod.column] if c is not None)


def open_dataset(cfg: Any, progress: bool = True) -> tuple[MultimodalDataset, Prepared | None]:
    """The dataset a run's config names: built-in ``digits`` (in memory), built-in ``colour-digits`` and any
    folder or ``hf:`` data (prepared into the cache), or an ``.npz`` file (in memory). The :class:`Prepared`
    record comes with prepared data (None otherwise)."""
    from .data import load_dataset

    if cfg.data is None and cfg.dataset == "digits":
        return load_dataset("digits", seed=cfg.seed), None
    root = cache_root(cfg.cache_dir)
    if cfg.data is None:
        from .builtin_export import builtin_folder

        data = str(builtin_folder(cfg.dataset, root))
    elif cfg.data.startswith("hf:") or Path(cfg.data).is_dir():
        data = cfg.data
    elif not Path(cfg.data).exists() and Path(cfg.data).suffix != ".npz":
        raise FastMMGANError(f"--data {cfg.data}: not found (expected a data folder, hf:PATH or an .npz file)")
    else:
        return load_dataset(path=cfg.data), None
    prepared = prepare(data, PrepareSettings.from_config(cfg), root, progress)
    return prepared.dataset, prepared
