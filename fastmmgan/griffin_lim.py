"""Waveforms from spectrogram magnitudes: a batched STFT pair and fast Griffin-Lim in float32 NumPy.

Audio features hold magnitudes only; decoding needs a phase. Fast Griffin-Lim (Perraudin, Balazs and Sondergaard,
2013) alternates the two projections of classic Griffin-Lim (onto the given magnitudes, and onto spectrograms
some waveform actually has) and adds momentum, which reaches classic Griffin-Lim's 32-iteration quality in
about half the iterations. Two choices make the result a well-conditioned, deterministic function of the
magnitudes, so samplers whose features agree to float32 rounding give waveforms that agree too:

- the start is zero phase, not random phase, so no random state is involved;
- the magnitude projection divides by ``|X| + eps`` instead of taking ``angle(X)``, whose value at near-zero
  bins flips with the last bit of its input and then spreads through every later iteration.

NumPy's FFT rather than ``torch.stft``/``torch.istft``: on small clips those spend most of their time in
per-call checks and the envelope computation, which this keeps precomputed per (n_fft, hop, length).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MOMENTUM = 0.99
ITERATIONS = 16
# Bins quieter than this (the silence floor's magnitude is about 1) get a shrunk, not a fresh, phase.
_EPS = 0.1


class StftPair:
    """STFT and inverse STFT with a periodic Hann window, centred reflect-padded frames (``torch.stft(center=True)``).

    ``forward``: waveforms [n, length] float32 -> spectra [n, frames, n_fft // 2 + 1] complex64.
    ``inverse``: spectra [n, frames, n_fft // 2 + 1] -> waveforms [n, length] float32 (least-squares overlap-add).
    """

    def __init__(self, n_fft: int, hop: int, length: int) -> None:
        self.n_fft, self.hop, self.length = n_fft, hop, length
        self.pad = n_fft // 2
        self.frames = length // hop + 1
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
        # The overlap-add buffer covers the padded signal and every frame, whichever is longer.
        self.span = max(length + 2 * self.pad, n_fft + hop * (self.frames - 1))
        envelope = np.zeros(self.span, dtype=np.float32)
        for t in range(self.frames):
            envelope[t * hop : t * hop + n_fft] += self.window**2
        # Samples no frame covers get 0, as torch.istft's zero padding to ``length`` does.
        self.inv_envelope = np.where(envelope > 1e-6, 1.0 / np.maximum(envelope, 1e-6), 0.0).astype(np.float32)

    def forward(self, wave: np.ndarray) -> np.ndarray:
        p = self.pad
        padded = np.concatenate([wave[:, p:0:-1], wave, wave[:, -2 : -p - 2 : -1]], axis=1)
        frames = sliding_window_view(padded, self.n_fft, axis=1)[:, :: self.hop][:, : self.frames]
        return np.fft.rfft(frames * self.window, axis=2).astype(np.complex64, copy=False)

    def inverse(self, spectra: np.ndarray) -> np.ndarray:
        frames = np.fft.irfft(spectra, n=self.n_fft, axis=2).astype(np.float32, copy=False) * self.window
        out = np.zeros((len(spectra), self.span), dtype=np.float32)
        for t in range(self.frames):
            out[:, t * self.hop : t * self.hop + self.n_fft] += frames[:, t]
        out *= self.inv_envelope
        return out[:, self.pad : self.pad + self.length]


@lru_cache(maxsize=16)
def stft_pair(n_fft: int, hop: int, length: int) -> StftPair:
    """The (cached) transform pair for one clip geometry."""
    return StftPair(n_fft, hop, length)


def _with_magnitude(spectra: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """``magnitude * spectra / |spectra|``, regularised so near-zero bins do not decide the phase by rounding."""
    return spectra * (magnitude / (np.abs(spectra) + _EPS))


def griffin_lim(
    magnitude: np.ndarray, pair: StftPair, iterations: int = ITERATIONS, momentum: float = MOMENTUM
) -> np.ndarray:
    """Magnitudes [n, frames, k] float32 of the lowest k bins (higher bins silent) -> waveforms [n, length] float32."""
    n, frames, k = magnitude.shape
    if frames != pair.frames or k > pair.n_fft // 2 + 1:
        raise ValueError(f"magnitudes of shape {magnitude.shape} do not fit {pair.frames} frames of {pair.n_fft // 2 + 1} bins")
    magnitude = magnitude.astype(np.float32, copy=False)
    full = np.zeros((n, frames, pair.n_fft // 2 + 1), dtype=np.complex64)
    # Only the lowest k bins carry magnitude, so only they are tracked between iterations.
    estimate = magnitude.astype(np.complex64)
    previous = estimate
    for _ in range(iterations):
        full[:, :, :k] = _with_magnitude(estimate, magnitude)
        consistent = pair.forward(pair.inverse(full))[:, :, :k]
        estimate = consistent + momentum * (consistent - previous)
        previous = consistent
    full[:, :, :k] = _with_magnitude(estimate, magnitude)
    return pair.inverse(full)


def spectral_convergence(wave: np.ndarray, magnitude: np.ndarray, pair: StftPair) -> float:
    """||  |STFT(wave)| - magnitude ||_F / ||magnitude||_F over the lowest k bins: 0 is a perfect match."""
    k = magnitude.shape[2]
    rebuilt = np.abs(pair.forward(wave.astype(np.float32)))[:, :, :k]
    return float(np.linalg.norm(rebuilt - magnitude) / max(float(np.linalg.norm(magnitude)), 1e-12))
