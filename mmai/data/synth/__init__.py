"""Synthetic CUB-200-2011 in the exact layout of the real archive and caption release.

On a machine without internet the experiments run on procedurally drawn birds whose species
differ in fine attributes (bill shape, length and colour, crown, wings, belly, tail, wing bars,
eye ring), some only in which part has which colour (swap variants, the binding test of ARO),
ten captions per image in the style of Reed et al. (CVPR 2016) that name only what the photo
shows, a song per recording and a simulated birdwatcher's diary whose photos come in bursts of
one bird, some taken in hard conditions (low light, motion blur, far away, behind leaves). The
zero-shot class lists keep each family of related species in one split. One call writes it all::

    from mmai.data.synth import synthesize
    summary = synthesize(Path("data/synth_cub"), classes=200, images=11788)

Modules: :mod:`~mmai.data.synth.species` (attribute families and names),
:mod:`~mmai.data.synth.draw` (pictures and part boxes), :mod:`~mmai.data.synth.captions`,
:mod:`~mmai.data.synth.song`, :mod:`~mmai.data.synth.diary` (outings, sightings, conditions),
:mod:`~mmai.data.synth.layout` (CUB tables, class splits), :mod:`~mmai.data.synth.writer`
(:func:`synthesize`). ``mmai_extras/README.md`` in a written data set documents every side file.
"""

from mmai.data.synth.writer import SynthSummary, is_grayscale, synthesize

__all__ = ["SynthSummary", "is_grayscale", "synthesize"]
