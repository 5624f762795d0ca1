"""Feature columns read row by row from a prepared dataset's memory-mapped arrays.

A prepared dataset (see :mod:`fastmmgan.prepare`) keeps each modality in its compact stored form: images as
uint8 pixels, captions as uint8 bags of words, audio as waveforms (or, for clips that fit in one window, as
float16 features). A column gathers the rows a batch asks for
and turns only those into float32 features, so training reads pages of the memory map instead of holding
the dataset in RAM as float32.

A column behaves as a read-only ``[N, dim]`` float32 tensor for indexing (``col[idx]`` with an index tensor,
a bool mask, a slice or an int), ``len`` and ``shape``; :meth:`FeatureColumn.take` is a lazy row subset
(the train/test split of a prepared dataset copies nothing) and :meth:`FeatureColumn.draw` is what training
reads: the same rows, with the column's augmentation (audio: a random crop) drawn from ``generator``.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .modalities import ModalitySpec


class FeatureColumn(abc.ABC):
    """Rows of one modality's stored array (``storage`` [N_stored, ...], any dtype, often a memory map),
    seen through ``rows`` (indices into it; None: all of them, in order)."""

    def __init__(self, spec: ModalitySpec, storage: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        self.spec = spec
        self.storage = storage
        self.rows = rows

    # -- what a subclass decides ------------------------------------------------------------------------
    @abc.abstractmethod
    def _features(self, stored: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Stored rows [n, ...] (storage rows ``index``) -> float32 features [n, dim]."""

    def _draw_features(self, stored: torch.Tensor, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Training's view of the same rows (augmented where the column has an augmentation)."""
        return self._features(stored, index)

    # -- tensor-like access -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.storage) if self.rows is None else len(self.rows)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.spec.dim)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return self.storage.device

    @property
    def row_bytes(self) -> int:
        """Bytes of one stored row."""
        return self.storage[:1].numel() * self.storage.element_size()

    def _chunk_rows(self) -> int:
        """Rows in about 64 MB of storage: what bulk reads (a copy to the GPU, a hash) take at a time."""
        return max(1, (64 << 20) // max(1, self.row_bytes))

    def _stored_chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, stored rows) of every viewed row in order, about 64 MB at a time: a bulk read that never
        holds the whole column twice."""
        idx = self._storage_index(slice(None))
        chunk = self._chunk_rows()
        for start in range(0, len(idx), chunk):
            yield start, self._gather(idx[start : start + chunk])

    def _storage_index(self, index: object) -> torch.Tensor:
        """Any index a tensor takes along its first axis -> int64 indices into ``storage``."""
        if isinstance(index, slice):
            local = torch.arange(len(self))[index]
        elif isinstance(index, int):
            local = torch.tensor([index])
        else:
            local = torch.as_tensor(index)
            if local.dtype == torch.bool:
                local = torch.nonzero(local.cpu(), as_tuple=True)[0]
            local = local.long().cpu().reshape(-1)
        return local if self.rows is None else self.rows[local]

    def _gather(self, index: torch.Tensor) -> torch.Tensor:
        # Sorted reads walk the memory map forwards (page cache friendly); the rows go back in asked order.
        order = torch.argsort(index)
        stored = torch.empty((len(index), *self.storage.shape[1:]), dtype=self.storage.dtype, device=self.storage.device)
        stored[order.to(self.storage.device)] = self.storage[index[order].to(self.storage.device)]
        return stored

    def __getitem__(self, index: object) -> torch.Tensor:
        idx = self._storage_index(index)
        out = self._features(self._gather(idx), idx)
        return out[0] if isinstance(index, int) else out

    def draw(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Training rows ``index`` (into this column) as float32 features [n, dim], augmented by ``generator``."""
        idx = self._storage_index(index)
        return self._draw_features(self._gather(idx), idx, generator)

    def take(self, index: torch.Tensor) -> FeatureColumn:
        """The rows ``index`` of this column as a new column over the same storage (nothing is copied)."""
        view = copy.copy(self)
        view.rows = self._storage_index(index)
        return view

    def to(self, device: torch.device | str) -> FeatureColumn:
        """The same rows with their stored form copied to ``device`` (a GPU-resident prepared dataset), in chunks
        of about 64 MB, so the host never holds a second copy of the column."""
        moved = copy.copy(self)
        moved.storage = torch.empty((len(self), *self.storage.shape[1:]), dtype=self.storage.dtype, device=device)
        for start, stored in self._stored_chunks():
            moved.storage[start : start + len(stored)] = stored.to(device)
        moved.rows = None
        return moved

    def digest_into(self, h: Any) -> None:
        """Feed the stored bytes of the viewed rows, and which rows they are, to a hashlib object ``h``."""
        h.update(repr((type(self).__name__, tuple(self.storage.shape[1:]), str(self.storage.dtype))).encode())
        h.update(self._storage_index(slice(None)).numpy().astype(np.int64).tobytes())
        for _, stored in self._stored_chunks():
            h.update(stored.contiguous().cpu().numpy().tobytes())


class PixelColumn(FeatureColumn):
    """Images stored as uint8 [N, H, W, C]; features are pixels / 255, flattened in H, W, C order."""

    def _features(self, stored: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return stored.reshape(len(stored), -1).float().div_(255.0)


class StoredFeatures(FeatureColumn):
    """Rows stored as the features themselves: captions as uint8 bags of words [N, V] (0/1), audio clips that fit
    in one window as float16 spectrogram features [N, dim]."""

    def _features(self, stored: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return stored.float()


class WaveColumn(FeatureColumn):
    """Audio stored as waveforms [N, L] (float16 or float32) with each clip's true length ``lengths`` [N_stored];
    features are the spectrogram of a ``spec.clip_samples`` window: centred for evaluation and sampling,
    at a uniformly random offset for training (:meth:`draw`). A clip shorter than the window is zero-padded."""

    def __init__(self, spec: ModalitySpec, storage: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor | None = None):
        super().__init__(spec, storage, rows)
        self.lengths = lengths

    def to(self, device: torch.device | str) -> FeatureColumn:
        """Audio columns stay in host memory: their features (crop, STFT) are computed on the CPU per batch, and
        only those go to the device."""
        return self

    def _crop(self, stored: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """Windows of ``spec.clip_samples`` from ``starts`` (stored rows hold AUDIO_WINDOWS windows, zero-padded)."""
        window = starts[:, None] + torch.arange(self.spec.clip_samples)[None, :]
        return torch.gather(stored.float().cpu(), 1, window)

    def _spare(self, index: torch.Tensor) -> torch.Tensor:
        """Samples each clip has beyond the window (0 for clips no longer than it)."""
        return (self.lengths[index].cpu() - self.spec.clip_samples).clamp(min=0)

    def _window_features(self, stored: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """Spectrogram features [n, dim] of the windows of ``stored`` rows that begin at ``starts``."""
        return self.spec.encode(self._crop(stored, starts).numpy()).to(stored.device)

    def _features(self, stored: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self._window_features(stored, self._spare(index) // 2)

    def _draw_features(self, stored: torch.Tensor, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        starts = (torch.rand(len(index), generator=generator) * (self._spare(index) + 1).float()).long()
        return self._window_features(stored, starts)


def draw_rows(column: torch.Tensor | FeatureColumn, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training's features of rows ``index`` of a feature column or an in-memory tensor [N, dim]."""
    return column.draw(index, generator) if isinstance(column, FeatureColumn) else column[index]


def take_rows(column: torch.Tensor | FeatureColumn, index: torch.Tensor) -> torch.Tensor | FeatureColumn:
    """Rows ``index`` of a column (lazily) or of an in-memory tensor (a copy)."""
    return column.take(index) if isinstance(column, FeatureColumn) else column[index]


def digest_into(h: Any, columns: Sequence[torch.Tensor | FeatureColumn]) -> None:
    """Feed columns' contents to a hashlib object ``h``: a column's stored bytes of the rows it views (never the
    float32 expansion, see :meth:`FeatureColumn.digest_into`), an in-memory tensor's bytes."""
    for col in columns:
        if isinstance(col, FeatureColumn):
            col.digest_into(h)
        else:
            h.update(col.contiguous().cpu().numpy().tobytes())
