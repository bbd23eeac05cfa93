"""CLAP's "fusion" log-mel features, computed in torch on the waveforms' device.

This is the input pipeline of CLAP HTSAT-fused (Wu et al., "Large-scale Contrastive
Language-Audio Pretraining with Feature Fusion and Keyword-to-Caption Augmentation",
ICASSP 2023), written with ``torch.stft`` so it runs batched on the GPU instead of per clip in
numpy. It reproduces ``transformers.ClapFeatureExtractor`` with ``truncation="fusion"``:

* clips up to ``max_length`` samples are padded (``"repeatpad"``: repeated whole, then zero
  padded; ``"repeat"``; or ``"pad"``), turned into one log-mel spectrogram and stacked four
  times, ``is_longer = False``;
* longer clips give a log-mel of the whole clip; the four channels are the whole clip shrunk to
  the chunk length (bilinear) and three chunk-long crops drawn from the front, middle and back
  thirds, ``is_longer = True``. Crops are random in training and the middle of each third in
  evaluation (deterministic); the numpy extractor always draws them at random.

Differences from the numpy extractor: spectra are computed in float32 (differences of ~1e-4 dB;
the tests compare both), and CLAP's trick of marking one random clip "longer" when none is, is
not copied: ``is_longer`` is the truth (see :class:`mmai.model.towers.audio.AudioTower`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ClapFeatureExtractor

#: Padding patterns of ``ClapFeatureExtractor`` this module reproduces.
PADDINGS = ("repeatpad", "repeat", "pad")


class ClapFusionFeatures(nn.Module):
    """Batched torch version of ``ClapFeatureExtractor(truncation="fusion")``.

    Args:
        extractor: the model's feature extractor; its sampling rate, FFT size, hop, HTK mel
            filters and padding pattern are used.
        max_length: clip length in samples before fusion kicks in (default: the extractor's
            ``max_length_s`` × sampling rate, 10 s at 48 kHz for CLAP).

    Raises:
        ValueError: the extractor does not use ``truncation="fusion"`` or a known padding.
    """

    def __init__(self, extractor: ClapFeatureExtractor, max_length: int | None = None) -> None:
        super().__init__()
        if extractor.truncation != "fusion" or extractor.padding not in PADDINGS:
            raise ValueError(f"ClapFusionFeatures needs truncation='fusion' and padding in {PADDINGS}; "
                             f"got truncation={extractor.truncation!r}, padding={extractor.padding!r}.")
        self.sampling_rate = int(extractor.sampling_rate)
        self.fft_size = int(extractor.fft_window_size)
        self.hop_length = int(extractor.hop_length)
        self.padding = extractor.padding
        self.max_length = int(max_length if max_length is not None else extractor.nb_max_samples)
        mel_filters = torch.as_tensor(extractor.mel_filters, dtype=torch.float32)  # (F, M)
        self.register_buffer("mel_filters", mel_filters, persistent=False)
        self.register_buffer("window", torch.hann_window(self.fft_size, periodic=True), persistent=False)

    @property
    def chunk_frames(self) -> int:
        """Mel frames of a ``max_length`` clip (the time size of every output channel)."""
        return self.max_length // self.hop_length + 1

    def log_mel(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Log-mel power spectrogram in dB (HTK filters, floor 1e-10 = -100 dB).

        Args:
            waveforms: ``(B, S)`` float.

        Returns:
            ``(B, T, M)`` with ``T = S // hop_length + 1``.
        """
        spectrum = torch.stft(waveforms, self.fft_size, self.hop_length, window=self.window, center=True,
                              pad_mode="reflect", return_complex=True)  # (B, F, T)
        power = spectrum.real.square() + spectrum.imag.square()  # (B, F, T)
        mel = torch.einsum("fm,bft->btm", self.mel_filters, power).clamp(min=1e-10)  # (B, T, M)
        return 10.0 * torch.log10(mel)  # (B, T, M)

    def pad(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Bring ``(B, S)`` clips with ``S < max_length`` to ``(B, max_length)`` by the padding pattern."""
        length = waveforms.shape[1]
        if length >= self.max_length:
            return waveforms
        repeats = self.max_length // length
        if self.padding == "repeat":
            return waveforms.repeat(1, repeats + 1)[:, : self.max_length]  # (B, max_length)
        if self.padding == "repeatpad":
            waveforms = waveforms.repeat(1, repeats)  # (B, repeats * S)
        return F.pad(waveforms, (0, self.max_length - waveforms.shape[1]))  # (B, max_length)

    def crop_starts(self, batch_size: int, total_frames: int, device: torch.device) -> torch.Tensor:
        """Start frames of the front/middle/back crops, ``(B, 3)`` long.

        The candidate starts ``0 .. total_frames - chunk_frames`` are split into three near-equal
        parts (as ``numpy.array_split``); an empty part falls back to start 0.
        """
        candidates = total_frames - self.chunk_frames + 1
        sizes = [candidates // 3 + (1 if part < candidates % 3 else 0) for part in range(3)]
        offsets = [0, sizes[0], sizes[0] + sizes[1]]
        starts = []
        for offset, size in zip(offsets, sizes):
            if size == 0:
                starts.append(torch.zeros(batch_size, dtype=torch.long, device=device))
            elif self.training:
                starts.append(offset + torch.randint(size, (batch_size,), device=device))
            else:
                starts.append(torch.full((batch_size,), offset + size // 2, dtype=torch.long, device=device))
        return torch.stack(starts, dim=1)  # (B, 3)

    def fuse(self, mel: torch.Tensor) -> torch.Tensor:
        """The four fusion channels of long clips: shrunk whole clip + three crops.

        Args:
            mel: ``(B, T_total, M)`` log-mel of the whole clips.

        Returns:
            ``(B, 4, chunk_frames, M)``.
        """
        batch_size, total_frames, mel_bins = mel.shape
        shrunk = F.interpolate(mel[:, None], size=(self.chunk_frames, mel_bins), mode="bilinear",
                               align_corners=False)  # (B, 1, C, M)
        starts = self.crop_starts(batch_size, total_frames, mel.device)  # (B, 3)
        frames = starts[:, :, None] + torch.arange(self.chunk_frames, device=mel.device)  # (B, 3, C)
        crops = mel[torch.arange(batch_size, device=mel.device)[:, None, None], frames]  # (B, 3, C, M)
        return torch.cat([shrunk, crops], dim=1)  # (B, 4, C, M)

    @torch.no_grad()
    def forward(self, waveforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Featurise a batch of mono clips.

        Args:
            waveforms: ``(B, S)`` at :attr:`sampling_rate`.

        Returns:
            ``input_features (B, 4, chunk_frames, M)`` float32 and ``is_longer (B, 1)`` bool, the
            inputs of ``ClapAudioModel``.
        """
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            waveforms = waveforms.float()
            batch_size = waveforms.shape[0]
            mel = self.log_mel(self.pad(waveforms))  # (B, T, M)
            longer = mel.shape[1] > self.chunk_frames
            if longer:
                features = self.fuse(mel)  # (B, 4, C, M)
            else:
                features = mel[:, None].expand(-1, 4, -1, -1).contiguous()  # (B, 4, C, M)
        is_longer = torch.full((batch_size, 1), longer, dtype=torch.bool, device=waveforms.device)
        return features, is_longer
