"""Reading colour from images and captions, for datasets whose captions name the colour things are drawn in
(the built-in ``colour-digits``): which named colour an image's strokes have, and which one a caption names.

The reader needs no training: an image's ink is its brightest quarter of pixels (by their largest channel),
and its colour is the palette entry nearest to the ink's mean, both scaled to unit brightness, so a faint
red still reads as red. On the real colour-digits test images it reads the caption's colour every time
(``colour_acc_real`` in ``python -m fastmmgan.evaluate``).
"""

from __future__ import annotations

import torch

from .builtin_export import COLOURS
from .modalities import ModalitySpec, tokenize

PALETTE_NAMES = tuple(COLOURS)
_PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255.0
INK_SHARE = 0.25


def colour_words(spec: ModalitySpec) -> tuple[int, ...]:
    """Vocabulary indices of the palette's colour names in a text modality (in palette order; -1 where absent)."""
    index = {w: i for i, w in enumerate(spec.vocab or ())}
    return tuple(index.get(name, -1) for name in PALETTE_NAMES)


def is_colour_image(spec: ModalitySpec) -> bool:
    """Whether ``spec`` is an RGB image modality."""
    return spec.kind == "image" and spec.channels == 3


def names_colours(spec: ModalitySpec) -> bool:
    """Whether captions of ``spec`` can name at least two palette colours."""
    return spec.kind == "text" and sum(i >= 0 for i in colour_words(spec)) >= 2


def caption_colour(spec: ModalitySpec, features: torch.Tensor) -> torch.Tensor:
    """The palette colour each caption names, [n] int64 (-1: none, or more than one). ``features``: [n, vocab]
    bags of words (a word counts when its score is above 0.5, as decoding reads it)."""
    words = colour_words(spec)
    named = torch.stack([features[:, i] > 0.5 if i >= 0 else torch.zeros(len(features), dtype=torch.bool)
                         for i in words], dim=1)
    return torch.where(named.sum(dim=1) == 1, named.float().argmax(dim=1), torch.full((len(features),), -1))


def text_colour(text: str) -> int:
    """The palette colour a caption names (-1: none, or more than one)."""
    found = {PALETTE_NAMES.index(w) for w in tokenize(text) if w in PALETTE_NAMES}
    return found.pop() if len(found) == 1 else -1


def ink_colour(spec: ModalitySpec, features: torch.Tensor) -> torch.Tensor:
    """The palette colour of each colour image's strokes, [n] int64. ``features``: [n, H*W*3] in [0, 1]."""
    pixels = features.float().reshape(len(features), -1, 3).clamp(0, 1)
    brightness = pixels.amax(dim=2)
    k = max(1, int(brightness.shape[1] * INK_SHARE))
    top = brightness.topk(k, dim=1).indices
    ink = torch.gather(pixels, 1, top[..., None].expand(-1, -1, 3)).mean(dim=1)
    unit = ink / ink.amax(dim=1, keepdim=True).clamp(min=1e-6)
    palette = _PALETTE / _PALETTE.amax(dim=1, keepdim=True)
    return torch.cdist(unit, palette).argmin(dim=1)
