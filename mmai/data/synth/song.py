"""Synthetic bird song: a species-specific sequence of frequency-swept, trilled notes.

Each species has a song template (:class:`SongParams`: base pitch, note count, note and gap
lengths, rhythm, per-note pitch step, sweep within a note, trill and a harmonic). Every recording
renders that template with its own jitter (pitch, timing, loudness, onset) over background noise,
as a field recording would. The sample rate, 48 kHz, is CLAP's (Wu et al., ICASSP 2023).
"""

from __future__ import annotations

import dataclasses

import numpy as np

SAMPLE_RATE = 48_000
MIN_SECONDS = 0.6
MAX_SECONDS = 1.2
LOWEST_HZ = 1_500.0
HIGHEST_HZ = 8_000.0


@dataclasses.dataclass(frozen=True)
class SongParams:
    """A species' song template.

    Args:
        base_hz: centre pitch of the song in Hz.
        notes: number of notes (2-7).
        note_seconds: length of one note.
        gap_seconds: silence between notes.
        rhythm: factor applied to the length of each successive note and gap (<1 accelerates).
        note_step: pitch ratio between successive notes (>1 rises), centred on ``base_hz``.
        sweep_octaves: pitch glide within one note, in octaves, centred on the note's pitch.
        trill_hz: rate of the frequency modulation (0 for none).
        trill_depth: depth of that modulation as a fraction of the pitch.
        harmonic: amplitude of the second harmonic relative to the fundamental.
    """

    base_hz: float
    notes: int
    note_seconds: float
    gap_seconds: float
    rhythm: float
    note_step: float
    sweep_octaves: float
    trill_hz: float
    trill_depth: float
    harmonic: float


def random_song(rng: np.random.Generator, pitch_fraction: float) -> SongParams:
    """A species' song template; ``pitch_fraction`` in [0, 1] places its pitch in 1.5-8 kHz (log)."""
    trill = rng.random() < 0.5
    return SongParams(
        base_hz=round(float(LOWEST_HZ * (HIGHEST_HZ / LOWEST_HZ) ** pitch_fraction), 1),
        notes=int(rng.integers(2, 8)),
        note_seconds=round(float(rng.uniform(0.04, 0.12)), 4),
        gap_seconds=round(float(rng.uniform(0.015, 0.06)), 4),
        rhythm=round(float(rng.uniform(0.85, 1.1)), 3),
        note_step=round(float(rng.uniform(0.94, 1.06)), 3),
        sweep_octaves=round(float(rng.uniform(-0.5, 0.5)), 3),
        trill_hz=round(float(rng.uniform(25.0, 70.0)), 1) if trill else 0.0,
        trill_depth=round(float(rng.uniform(0.02, 0.06)), 3) if trill else 0.0,
        harmonic=round(float(rng.uniform(0.0, 0.3)), 3),
    )


def _note(params: SongParams, pitch_hz: float, seconds: float) -> np.ndarray:
    """One note: a glide around ``pitch_hz`` with optional trill, second harmonic and envelope."""
    samples = max(int(seconds * SAMPLE_RATE), 16)
    t = np.linspace(0.0, 1.0, samples, endpoint=False)  # (S,) fraction of the note
    glide = 2.0 ** (params.sweep_octaves * (t - 0.5))
    trill = 1.0 + params.trill_depth * np.sin(2 * np.pi * params.trill_hz * seconds * t)
    frequency = pitch_hz * glide * trill  # (S,) Hz
    phase = 2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE
    wave = np.sin(phase) + params.harmonic * np.sin(2 * phase)
    envelope = np.sin(np.pi * t) ** 2
    return wave * envelope / (1.0 + params.harmonic)


def render_song(params: SongParams, rng: np.random.Generator) -> np.ndarray:
    """One recording of a species' song, float32 in [-1, 1] at :data:`SAMPLE_RATE`.

    Jitter per recording: pitch ±4 %, note and gap lengths ±10 % each, loudness, onset; the song
    is squeezed if it would not fit, and the clip lasts 0.6-1.2 s with background noise throughout.
    """
    seconds = float(rng.uniform(MIN_SECONDS, MAX_SECONDS))
    total = int(seconds * SAMPLE_RATE)
    pitch = params.base_hz * float(rng.uniform(0.96, 1.04))
    lengths = []
    for index in range(params.notes):
        scale = params.rhythm**index
        lengths.append((params.note_seconds * scale * float(rng.uniform(0.9, 1.1)),
                        params.gap_seconds * scale * float(rng.uniform(0.9, 1.1))))
    song_seconds = sum(note + gap for note, gap in lengths)
    squeeze = min(1.0, 0.85 * seconds / song_seconds)
    clip = np.zeros(total, dtype=np.float64)
    cursor = int(rng.uniform(0.0, seconds - song_seconds * squeeze) * SAMPLE_RATE * 0.8)
    centre = (params.notes - 1) / 2
    for index, (note_seconds, gap_seconds) in enumerate(lengths):
        note = _note(params, pitch * params.note_step ** (index - centre), note_seconds * squeeze)
        end = min(cursor + len(note), total)
        clip[cursor:end] += note[: end - cursor]
        cursor = end + int(gap_seconds * squeeze * SAMPLE_RATE)
    noise = rng.normal(0.0, float(rng.uniform(0.003, 0.015)), total)
    return (clip * float(rng.uniform(0.4, 0.8)) + noise).clip(-1.0, 1.0).astype(np.float32)
