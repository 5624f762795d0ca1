"""Where a user's data lies on disk, as one table: rows of files and captions, before anything is decoded.

Three layouts (see the README's *Your own data*):
- a folder with ``metadata.jsonl`` or ``metadata.csv`` beside the files (Hugging Face's ``imagefolder`` /
  ``audiofolder`` convention): ``file_name`` for the one file column, or ``<modality>_file_name`` per file
  modality; other columns are captions, except an integer ``label`` column, which becomes the labels;
- a folder of class subfolders, ``DIR/<class>/<stem>.png|.wav``: files of one stem in one folder are one row,
  the folder name is its caption and its label (files directly in ``DIR`` are rows with no caption);
- ``hf:PATH``: a Hugging Face ``datasets`` dataset saved with ``save_to_disk``, or a folder of parquet or
  arrow files, opened offline: ``Image`` and ``Audio`` columns are files, string columns captions, a
  ``ClassLabel`` the labels (and, when there is no string column, the captions).

A cell is a file (a path, or bytes for a dataset that embeds them), a caption, or None where the row lacks it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FastMMGANError, first_line
from .file_readers import kind_of_path
from .modalities import KINDS

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_NAMES = ("caption", "captions", "text", "description", "prompt", "label_text")
LABEL_COLUMN = "label"


@dataclass
class Table:
    """Rows of a dataset on disk: ``columns`` maps each usable column to its kind (file columns ``image`` or
    ``audio``, the rest ``text``); ``cells[c][i]`` is row i's value of column c (None: absent)."""

    source: str
    columns: dict[str, str]
    cells: dict[str, Sequence[Any]]
    labels: list[int] | None
    fingerprint: str
    row_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(next(iter(self.cells.values()))) if self.cells else 0

    def where(self, i: int) -> str:
        """Row ``i`` as a person finds it: the metadata line, or the files of a class folder."""
        return self.row_names[i] if self.row_names else f"{self.source} row {i}"


@dataclass(frozen=True)
class Modality:
    """A modality picked from a table: its name, kind and the column it reads."""

    name: str
    kind: str
    column: str


def parse_mapping(text: str | None) -> dict[str, str] | None:
    """``"image=image,caption=text"`` -> {"image": "image", "caption": "text"} (None stays None)."""
    if text is None:
        return None
    mapping: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(",")):
        name, sep, kind = entry.partition("=")
        if not sep or not name or kind not in KINDS:
            raise FastMMGANError(f"--modalities: {entry!r} is not name=kind with kind one of {', '.join(KINDS)} "
                                 "(e.g. image=image,caption=text,speech=audio)")
        if name in mapping:
            raise FastMMGANError(f"--modalities: {name!r} is named twice")
        mapping[name] = kind
    return mapping


def _file_modality_name(column: str, kind: str) -> str:
    """``file_name`` -> the kind, ``photo_file_name`` -> ``photo``, any other file column keeps its name."""
    if column == "file_name":
        return kind
    return column[: -len("_file_name")] if column.endswith("_file_name") else column


def pick_modalities(table: Table, mapping: Mapping[str, str] | None) -> list[Modality]:
    """The table's modalities (see :func:`_pick`); two with one name are an error."""
    picked = _pick(table, mapping)
    names = [m.name for m in picked]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FastMMGANError(f"{table.source}: two modalities would be named {twice[0]!r} (a file column and a caption "
                             "column); name them with --modalities")
    return picked


def _pick(table: Table, mapping: Mapping[str, str] | None) -> list[Modality]:
    """The table's modalities: every file column and one caption column by default (the one named like a
    caption when there are several), or exactly those ``mapping`` names (name -> kind; a name is a column,
    or the ``<name>_file_name`` column)."""
    files = {c: k for c, k in table.columns.items() if k != "text"}
    texts = [c for c, k in table.columns.items() if k == "text"]
    listed = ", ".join(table.columns) or "none"
    if mapping is None:
        picked = [Modality(_file_modality_name(c, k), k, c) for c, k in files.items()]
        if len(texts) == 1:
            picked.append(Modality(texts[0], "text", texts[0]))
        elif texts:
            named = [c for c in texts if c.lower() in CAPTION_NAMES]
            if len(named) != 1:
                raise FastMMGANError(f"{table.source}: several caption columns ({', '.join(texts)}); pick the modalities "
                                     "with --modalities, e.g. --modalities image=image," + texts[0] + "=text")
            picked.append(Modality(named[0], "text", named[0]))
        if not picked:
            raise FastMMGANError(f"{table.source}: no image, audio or caption column found (columns: {listed})")
        return picked
    picked = []
    for name, kind in mapping.items():
        by_kind = [c for c, k in files.items() if c == "file_name" and k == kind]
        candidates = [c for c in (name, f"{name}_file_name") if c in table.columns] or by_kind
        if not candidates:
            raise FastMMGANError(f"--modalities: {table.source} has no column {name!r} (columns: {listed})")
        column = candidates[0]
        if table.columns[column] != kind:
            raise FastMMGANError(f"--modalities: column {column!r} of {table.source} holds {table.columns[column]}, "
                                 f"not {kind}")
        picked.append(Modality(name, kind, column))
    return picked


# -- folders ------------------------------------------------------------------------------------------------

def _stat_digest(h: Any, path: Path) -> None:
    """Feed a file's name, size and modification time to ``h`` (file names need not be valid UTF-8)."""
    h.update(os.fsencode(path))
    try:
        st = path.stat()
        h.update(f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    except (OSError, ValueError):  # ValueError: a name with a NUL byte, which no file can have
        h.update(b"\0missing\n")


def _metadata_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number, record) of a metadata file; one-line errors for a malformed line or row."""
    try:
        yield from _metadata_records(path)
    except UnicodeDecodeError as e:
        raise FastMMGANError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the metadata as UTF-8") from None


def _metadata_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    # utf-8-sig: a spreadsheet's byte-order mark would otherwise become part of the first column's name.
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise FastMMGANError(f"{path} line {number}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict):
                    raise FastMMGANError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
                yield number, record
        return
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise FastMMGANError(f"{path}: the CSV has no header row")
        for number, record in enumerate(reader, 2):
            extra, missing = record.pop(None, []), sum(v is None for v in record.values())
            if extra or missing:
                raise FastMMGANError(f"{path} row {number}: {len(record) - missing + len(extra)} fields where the header "
                                     f"has {len(reader.fieldnames)} ({', '.join(reader.fieldnames)})")
            yield number, record


def _label(value: Any, where: str) -> int:
    """An integer label (a JSON integer or an integer string) in int64's range; one-line error otherwise."""
    try:
        label = int(value) if isinstance(value, int) and not isinstance(value, bool) else int(str(value).strip(), 10) \
            if isinstance(value, str) else None
    except ValueError:
        label = None
    if label is None or not -(2**62) < label < 2**62:
        raise FastMMGANError(f"{where}: {LABEL_COLUMN} must be an integer, got {value!r:.40}")
    return label


def _cell(value: Any) -> Any:
    """A metadata value as a cell: empty strings and nulls are absent."""
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def _metadata_table(root: Path, meta: Path) -> Table:
    h = hashlib.sha256(meta.read_bytes())
    records = list(_metadata_rows(meta))
    if not records:
        raise FastMMGANError(f"{meta}: no rows")
    names = list(dict.fromkeys(k for _, r in records for k in r))
    file_columns = [c for c in names if c == "file_name" or c.endswith("_file_name")]
    if not file_columns and not any(c != LABEL_COLUMN for c in names):
        raise FastMMGANError(f"{meta}: no file_name column and no caption column (columns: {', '.join(names)})")
    columns: dict[str, str] = {}
    cells: dict[str, list[Any]] = {c: [] for c in names if c != LABEL_COLUMN}
    labels: list[int] | None = [] if LABEL_COLUMN in names else None
    for number, record in records:
        for c in cells:
            value = _cell(record.get(c))
            if c in file_columns and value is not None:
                if not isinstance(value, str) or "\0" in value:
                    raise FastMMGANError(f"{meta} row {number}: {c} must be a file name, got {value!r:.40}")
                kind = kind_of_path(value)
                if kind is None:
                    raise FastMMGANError(f"{meta} row {number}: {c} {value!r} is neither an image nor an audio file "
                                         "(by its extension)")
                if columns.setdefault(c, kind) != kind:
                    raise FastMMGANError(f"{meta} row {number}: {c} mixes image and audio files; give each its own "
                                         "<modality>_file_name column")
                value = root / value
                _stat_digest(h, value)
            elif value is not None and c not in file_columns:
                columns.setdefault(c, "text")
                value = str(value)
            cells[c].append(value)
        if labels is not None:
            labels.append(_label(record.get(LABEL_COLUMN), f"{meta} row {number}"))
    cells = {c: v for c, v in cells.items() if c in columns}
    for c in cells:
        values = [v for v in cells[c] if v is not None]
        if columns[c] == "text" and values and all(" " not in v and kind_of_path(v) for v in values):
            raise FastMMGANError(f"{meta}: column {c!r} holds file names; name it file_name (one file column) or "
                                 "<modality>_file_name (e.g. image_file_name)")
    where = [f"{meta} {'line' if meta.suffix == '.jsonl' else 'row'} {number}" for number, _ in records]
    return Table(str(root), columns, cells, labels, h.hexdigest(), where)


def _class_folder_table(root: Path) -> Table:
    h = hashlib.sha256(b"class-folders")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows: dict[tuple[str | None, str], dict[str, Path]] = {}
    for folder, label in [(root, None), *((root / c, c) for c in classes)]:
        for path in sorted(folder.iterdir()):
            kind = kind_of_path(path.name) if path.is_file() and not path.name.startswith(".") else None
            if kind is not None:
                row = rows.setdefault((label, path.stem), {})
                if kind in row:
                    raise FastMMGANError(f"{folder}: two {kind} files with the stem {path.stem!r} "
                                         f"({row[kind].name}, {path.name}); a row has one file of each kind")
                row[kind] = path
                _stat_digest(h, path)
    if not rows:
        raise FastMMGANError(f"{root}: no {' or '.join(METADATA_FILES)} and no image or audio files in it or in its "
                             "class subfolders")
    keys = list(rows)
    kinds = [k for k in ("image", "audio") if any(k in r for r in rows.values())]
    columns = {k: k for k in kinds}
    cells: dict[str, list[Any]] = {k: [rows[key].get(k) for key in keys] for k in kinds}
    used = sorted({label for label, _ in keys if label is not None})
    labels = None
    if used:
        columns["text"] = "text"
        cells["text"] = [label for label, _ in keys]
        if all(label is not None for label, _ in keys):
            labels = [used.index(label) for label, _ in keys]
    where = [", ".join(str(p) for p in rows[key].values()) for key in keys]
    return Table(str(root), columns, cells, labels, h.hexdigest(), where)


def folder_table(root: str | Path) -> Table:
    """The table of a data folder (metadata file, or class subfolders)."""
    root = Path(root)
    if not root.is_dir():
        raise FastMMGANError(f"data folder not found: {root}")
    root = root.resolve()  # the same folder named from elsewhere is the same data
    metas = [root / name for name in METADATA_FILES if (root / name).is_file()]
    if len(metas) > 1:
        raise FastMMGANError(f"{root}: both metadata.jsonl and metadata.csv; keep one")
    return _metadata_table(root, metas[0]) if metas else _class_folder_table(root)


# -- Hugging Face datasets ----------------------------------------------------------------------------------

SPLIT_WORDS = ("train", "test", "validation", "valid", "val", "dev", "eval")


def _train_files(path: Path, suffix: str) -> list[Path]:
    """The ``*.suffix`` files to train on: ``path`` itself, or those in folder ``path``; where the file names
    carry split names (the Hub's ``data/train-00000-of-00002.parquet`` layout), only the train split's."""
    if path.is_file():
        return [path] if path.suffix == f".{suffix}" else []
    files = sorted(path.glob(f"**/*.{suffix}"))
    words = {f: set(re.split(r"[^a-z]+", str(f.relative_to(path)).lower())) for f in files}
    splits = {f: next((w for w in SPLIT_WORDS if w in words[f]), None) for f in files}
    if not any(splits.values()):
        return files
    train = [f for f, split in splits.items() if split == "train"]
    if not train:
        found = ", ".join(sorted({s for s in splits.values() if s}))
        raise FastMMGANError(f"hf:{path}: split files without a train split ({found})")
    return train


def _open_hf(path: Path) -> Any:
    """A ``datasets.Dataset`` from ``save_to_disk`` output or a folder of parquet/arrow files, offline."""
    try:
        import datasets
    except ImportError:
        raise FastMMGANError("--data hf: needs the datasets package: pip install 'fastmmgan[hf]'") from None
    if not path.exists():
        raise FastMMGANError(f"hf:{path}: not found")
    try:
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            ds = datasets.load_from_disk(str(path))
        else:
            parquet = _train_files(path, "parquet")
            arrow = [] if parquet else _train_files(path, "arrow")
            if parquet:
                ds = datasets.Dataset.from_parquet([str(p) for p in parquet])
            elif arrow:
                ds = datasets.concatenate_datasets([datasets.Dataset.from_file(str(p)) for p in arrow])
            else:
                raise FastMMGANError(f"hf:{path}: neither a saved dataset (dataset_info.json) nor parquet/arrow files")
    except FastMMGANError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets and pyarrow raise many types for damaged data
        raise FastMMGANError(f"hf:{path}: cannot open the dataset ({first_line(e)})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise FastMMGANError(f"hf:{path}: a dataset dict without a 'train' split (splits: {', '.join(ds)})")
        ds = ds["train"]
    return ds


def _hf_file(value: Any, base: Path) -> Any:
    """An undecoded ``Image``/``Audio`` cell ({"bytes", "path"}) as its bytes, or as its file (a relative path is
    taken relative to the dataset's folder); None when empty."""
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        return base / value["path"] if value.get("path") else None
    return value


class _HFColumn(Sequence):
    """One file column of a Hugging Face dataset, read a row at a time (its bytes never all in memory at once)."""

    def __init__(self, ds: Any, name: str, base: Path) -> None:
        self.column = ds.select_columns([name])
        self.name, self.base = name, base

    def __len__(self) -> int:
        return len(self.column)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return _hf_file(self.column[int(i)][self.name], self.base)


def _referenced_files(ds: Any, name: str, base: Path) -> list[Path]:
    """The files a file column names instead of embedding their bytes (read from the arrow table's ``path``
    and ``bytes`` fields, without loading any bytes): their sizes and times go into the cache key."""
    files = []
    for chunk in ds.data.column(name).chunks:
        embedded = chunk.field("bytes").is_valid().to_pylist()
        for has_bytes, p in zip(embedded, chunk.field("path").to_pylist(), strict=True):
            if not has_bytes and p:
                files.append(base / p)
    return files


def hf_table(path: str | Path) -> Table:
    """The table of a Hugging Face dataset on disk; file cells hold the bytes the dataset embeds (or paths)."""
    path = Path(path)
    ds = _open_hf(path)
    import datasets  # _open_hf has said what to install when it is missing

    columns: dict[str, str] = {}
    label_column, label_names = None, None
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            columns[name] = "image"
            ds = ds.cast_column(name, datasets.Image(decode=False))
        elif isinstance(feature, datasets.Audio):
            columns[name] = "audio"
            ds = ds.cast_column(name, datasets.Audio(decode=False))
        elif isinstance(feature, datasets.ClassLabel) and label_column is None:
            label_column, label_names = name, list(feature.names)
        elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            columns[name] = "text"
        elif name == LABEL_COLUMN and isinstance(feature, datasets.Value) and "int" in feature.dtype:
            label_column = name
    if len(ds) == 0:
        raise FastMMGANError(f"hf:{path}: the dataset is empty")
    base = (path if path.is_dir() else path.parent).resolve()
    # File columns stay in the dataset's memory-mapped arrow table, read row by row as they are decoded.
    cells: dict[str, Sequence[Any]] = {name: _HFColumn(ds, name, base) if kind != "text" else [_cell(v) for v in ds[name]]
                                       for name, kind in columns.items()}
    labels = None
    if label_column is not None:
        labels = [_label(v, f"hf:{path} row {i}") for i, v in enumerate(ds[label_column])]
        if label_names is not None:
            missing = next((i for i, v in enumerate(labels) if not 0 <= v < len(label_names)), None)
            if missing is not None:
                raise FastMMGANError(f"hf:{path} row {missing}: {label_column} is {labels[missing]}, not one of its "
                                     f"{len(label_names)} classes (a missing label?)")
            if "text" not in columns.values():
                columns[label_column] = "text"
                cells[label_column] = [label_names[v] for v in labels]
    h = hashlib.sha256(f"hf\0{path.resolve()}\0{getattr(ds, '_fingerprint', '')}".encode())
    for name, kind in columns.items():
        if kind != "text":
            for file in _referenced_files(ds, name, base):
                _stat_digest(h, file)
    return Table(f"hf:{path}", columns, cells, labels, h.hexdigest())


def open_table(data: str) -> Table:
    """The table behind ``--data``: ``hf:PATH`` or a folder."""
    return hf_table(data[3:]) if data.startswith("hf:") else folder_table(data)
