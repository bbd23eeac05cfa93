"""Synthetic CUB-200-2011 in the exact layout of the real archive and caption release.

On a machine without internet the experiments run on procedurally drawn birds whose species
differ in fine attributes (bill shape, length and colour, crown, wings, belly, tail, wing bars,
eye ring), ten captions per image in the style of Reed et al. (CVPR 2016), a song per recording
and a simulated birdwatcher's diary. One call writes it all::

    from mmai.data.synth import synthesize
    summary = synthesize(Path("data/synth_cub"), classes=200, images=11788)

Modules: :mod:`~mmai.data.synth.species` (attribute families and names),
:mod:`~mmai.data.synth.draw` (pictures and part boxes), :mod:`~mmai.data.synth.captions`,
:mod:`~mmai.data.synth.song`, :mod:`~mmai.data.synth.diary`, :mod:`~mmai.data.synth.layout`
(CUB tables), :mod:`~mmai.data.synth.writer` (:func:`synthesize`).
"""

from mmai.data.synth.writer import SynthSummary, is_grayscale, synthesize

__all__ = ["SynthSummary", "is_grayscale", "synthesize"]
