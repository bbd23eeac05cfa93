"""Hard negatives for the fusion re-ranker's matching loss, sampled from stage-1 similarities.

ALBEF (Li et al., NeurIPS 2021, section 3.2) trains its image-text matching head on the hardest
in-batch negatives: for each caption an image drawn with probability ``softmax(similarity)``
among the images that are not its own, and for each image a caption drawn the same way. Here
"not its own" is decided by **image id**, never by row position, so a negative is never the
positive's image even when the same image fills two rows of a batch (or of a memory bank), and
never one of the positive image's other captions.

Same-class images (another photo of the species) are naturally the most similar, hence the
hardest negatives. On CUB-style captions, which describe species attributes, such a pair often
*does* match (a false negative); ``same_class_weight`` scales their probability (0 excludes
them, values above 1 favour them).

Sampling uses the Gumbel-top-k trick (``argtop-k(logits + Gumbel noise)`` draws k distinct items
without replacement with the softmax's probabilities), vectorised over queries and deterministic
given a ``torch.Generator``.
"""

from __future__ import annotations

import re

import dataclasses
import math

import torch

#: Kinds of pairs in a :class:`MatchBatch`.
POSITIVE, NEGATIVE_IMAGE, NEGATIVE_CAPTION = 0, 1, 2


def _gumbel(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    noise_device = generator.device if generator is not None else device
    uniform = torch.rand(shape, generator=generator, device=noise_device).to(device)
    tiny = torch.finfo(uniform.dtype).tiny
    return -torch.log(-torch.log(uniform.clamp(tiny, 1.0 - 1e-7)))


def _check_ids(similarity: torch.Tensor, query_image_ids: torch.Tensor, candidate_image_ids: torch.Tensor,
               query_class_ids: torch.Tensor | None, candidate_class_ids: torch.Tensor | None) -> None:
    if similarity.ndim != 2:
        raise ValueError(f"sample_hard_negatives: similarity must be (Q, C), got {tuple(similarity.shape)}.")
    expected = {"query_image_ids": (query_image_ids, similarity.shape[0]),
                "candidate_image_ids": (candidate_image_ids, similarity.shape[1]),
                "query_class_ids": (query_class_ids, similarity.shape[0]),
                "candidate_class_ids": (candidate_class_ids, similarity.shape[1])}
    for name, (ids, size) in expected.items():
        if ids is not None and ids.shape != (size,):
            raise ValueError(f"sample_hard_negatives: {name} has shape {tuple(ids.shape)}, expected ({size},) "
                             f"to fit similarity {tuple(similarity.shape)}.")
    if (query_class_ids is None) != (candidate_class_ids is None):
        raise ValueError("sample_hard_negatives: pass both query_class_ids and candidate_class_ids, or neither.")


@torch.no_grad()
def sample_hard_negatives(
    similarity: torch.Tensor,
    query_image_ids: torch.Tensor,
    candidate_image_ids: torch.Tensor,
    num_negatives: int = 1,
    temperature: float = 0.07,
    query_class_ids: torch.Tensor | None = None,
    candidate_class_ids: torch.Tensor | None = None,
    same_class_weight: float = 1.0,
    generator: torch.Generator | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw hard negatives for each query with probability ``softmax(similarity / temperature)``.

    Works in both directions: captions as queries against images (``similarity`` = text-to-image,
    ``query_image_ids`` = each caption's image id) or images against captions (the transpose).
    The candidates may be the batch or a bank of past items.

    Args:
        similarity: ``(Q, C)`` stage-1 similarity (cosine) of each query to each candidate.
        query_image_ids: ``(Q,)`` image id of each query (a caption's own image).
        candidate_image_ids: ``(C,)`` image id of each candidate; candidates with the query's image
            id are never drawn.
        num_negatives: distinct negatives per query (default 1, as ALBEF).
        temperature: softmax temperature on ``similarity`` (default 0.07; pass 1.0 when the
            similarity is already divided by the bi-encoder's temperature).
        query_class_ids, candidate_class_ids: ``(Q,)``, ``(C,)`` class ids, needed only when
            ``same_class_weight != 1``.
        same_class_weight: multiplies the probability of same-class candidates (default 1.0 =
            plain ALBEF; 0.0 never draws another image/caption of the query's species).
        generator: makes the draw reproducible (default None: the global RNG).
        allowed: ``(Q, C)`` bool, the candidates that may be drawn at all (default None: every one):
            the *true* negatives, e.g. the species a caption contradicts
            (:meth:`mmai.data.consistency.SpeciesTable.consistent`, negated).

    Returns:
        ``(Q, num_negatives)`` long candidate indices, most probable draw first; ``-1`` where a
        query has fewer eligible candidates than ``num_negatives`` (e.g. a batch of one image).
    """
    _check_ids(similarity, query_image_ids, candidate_image_ids, query_class_ids, candidate_class_ids)
    if num_negatives < 1 or temperature <= 0 or same_class_weight < 0:
        raise ValueError(f"sample_hard_negatives: need num_negatives >= 1, temperature > 0 and "
                         f"same_class_weight >= 0; got {num_negatives}, {temperature}, {same_class_weight}.")
    logits = similarity.detach().float() / temperature  # (Q, C)
    eligible = query_image_ids[:, None] != candidate_image_ids[None, :]  # (Q, C)
    if allowed is not None:
        if allowed.shape != eligible.shape:
            raise ValueError(f"sample_hard_negatives: allowed has shape {tuple(allowed.shape)}, the similarity "
                             f"{tuple(eligible.shape)}")
        eligible &= allowed.to(eligible.device)
    if same_class_weight != 1.0:
        if query_class_ids is None:
            raise ValueError("sample_hard_negatives: same_class_weight != 1 needs query_class_ids and "
                             "candidate_class_ids.")
        same_class = query_class_ids[:, None] == candidate_class_ids[None, :]  # (Q, C)
        if same_class_weight == 0.0:
            eligible &= ~same_class
        else:
            logits = logits + same_class * math.log(same_class_weight)
    keys = (logits + _gumbel(tuple(logits.shape), logits.device, generator)).masked_fill(~eligible, -math.inf)
    count = min(num_negatives, keys.shape[1])
    values, indices = keys.topk(count, dim=1)  # (Q, count)
    indices = indices.masked_fill(values == -math.inf, -1)
    if count < num_negatives:
        indices = torch.cat([indices, indices.new_full((len(indices), num_negatives - count), -1)], dim=1)
    return indices  # (Q, num_negatives)


@dataclasses.dataclass
class MatchBatch:
    """The pairs of one image-text matching step (ALBEF's ITM batch).

    Row ``p`` pairs caption row ``text_index[p]`` with image row ``image_index[p]`` of the batch
    (or bank). Order: all positives, then the hard negative images of each caption, then the hard
    negative captions of each image.

    Attributes:
        text_index: ``(P,)`` long, rows of the caption token states.
        image_index: ``(P,)`` long, rows of the image patch tokens.
        labels: ``(P,)`` float, 1.0 for a matching pair, 0.0 for a negative.
        kind: ``(P,)`` long, :data:`POSITIVE`, :data:`NEGATIVE_IMAGE` or :data:`NEGATIVE_CAPTION`.
    """

    text_index: torch.Tensor
    image_index: torch.Tensor
    labels: torch.Tensor
    kind: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def gather(
        self, text_tokens: torch.Tensor, attention_mask: torch.Tensor, patches: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pairs' inputs for :class:`~mmai.reranker.fusion.FusionReranker`.

        Args:
            text_tokens: ``(Bt, L, Dt)``; attention_mask ``(Bt, L)``; patches ``(B, N, Dv)``.

        Returns:
            ``text_tokens (P, L, Dt)``, ``attention_mask (P, L)``, ``patches (P, N, Dv)``.
        """
        return text_tokens[self.text_index], attention_mask[self.text_index], patches[self.image_index]


@torch.no_grad()
def build_match_batch(
    similarity: torch.Tensor,
    caption_owner: torch.Tensor,
    image_ids: torch.Tensor,
    class_ids: torch.Tensor | None = None,
    num_negatives: int = 1,
    temperature: float = 0.07,
    same_class_weight: float = 1.0,
    generator: torch.Generator | None = None,
) -> MatchBatch:
    """Positives and hard negatives in both directions for one batch.

    Every caption is paired with its own image (label 1) and with ``num_negatives`` hard negative
    images (label 0); every image with ``num_negatives`` hard negative captions (label 0).
    Negatives come from :func:`sample_hard_negatives`; slots without an eligible negative are
    dropped, so ``len(batch)`` may be below ``Bt + num_negatives * (Bt + B)``.

    Args:
        similarity: ``(Bt, B)`` text-to-image stage-1 similarity within the batch (cosine;
            detached here).
        caption_owner: ``(Bt,)`` image row of each caption.
        image_ids: ``(B,)`` image ids (rows may repeat an id).
        class_ids: ``(B,)`` class ids, needed when ``same_class_weight != 1``.
        num_negatives, temperature, same_class_weight, generator: see
            :func:`sample_hard_negatives` (defaults 1, 0.07, 1.0, None).

    Returns:
        :class:`MatchBatch`; ``batch.gather(text_tokens, attention_mask, patches)`` gives the
        fusion inputs and ``batch.labels`` the :func:`~mmai.reranker.fusion.match_loss` targets.
    """
    num_captions, num_images = similarity.shape
    if caption_owner.shape != (num_captions,) or image_ids.shape != (num_images,):
        raise ValueError(f"build_match_batch: similarity {tuple(similarity.shape)} needs caption_owner "
                         f"({num_captions},) and image_ids ({num_images},); got {tuple(caption_owner.shape)} and "
                         f"{tuple(image_ids.shape)}.")
    caption_image_ids = image_ids[caption_owner]  # (Bt,)
    caption_class_ids = class_ids[caption_owner] if class_ids is not None else None  # (Bt,)
    options = dict(num_negatives=num_negatives, temperature=temperature, same_class_weight=same_class_weight,
                   generator=generator)
    negative_images = sample_hard_negatives(similarity, caption_image_ids, image_ids, query_class_ids=caption_class_ids,
                                            candidate_class_ids=class_ids, **options)  # (Bt, n)
    negative_captions = sample_hard_negatives(similarity.T, image_ids, caption_image_ids, query_class_ids=class_ids,
                                              candidate_class_ids=caption_class_ids, **options)  # (B, n)
    captions = torch.arange(num_captions, device=similarity.device)  # (Bt,)
    images = torch.arange(num_images, device=similarity.device)  # (B,)
    parts = [
        (captions, caption_owner, POSITIVE),
        (captions.repeat_interleave(num_negatives), negative_images.flatten(), NEGATIVE_IMAGE),
        (negative_captions.flatten(), images.repeat_interleave(num_negatives), NEGATIVE_CAPTION),
    ]
    text_index, image_index, kind = [], [], []
    for text_rows, image_rows, pair_kind in parts:
        keep = (text_rows >= 0) & (image_rows >= 0)
        text_index.append(text_rows[keep])
        image_index.append(image_rows[keep])
        kind.append(torch.full((int(keep.sum()),), pair_kind, dtype=torch.long, device=similarity.device))
    kind_all = torch.cat(kind)
    return MatchBatch(torch.cat(text_index), torch.cat(image_index), (kind_all == POSITIVE).float(), kind_all)


#: Colour words of the caption vocabulary (the synthetic captions' and most of CUB's).
COLOUR_WORDS = ("cream colored", "black", "orange", "yellow", "grey", "gray", "red", "blue", "brown", "white",
                "buff", "tan", "green", "purple", "pink", "olive", "rufous", "chestnut")
_COLOUR = re.compile(r"\b(" + "|".join(re.escape(word) for word in COLOUR_WORDS) + r")\b")


def swap_colour_words(caption: str) -> str | None:
    """The caption with its first two different colour words exchanged, or None when it names
    fewer than two colours.

    A composition-aware hard negative (NegCLIP, Yuksekgonul et al., ICLR 2023): "an orange bill and
    a grey belly" becomes "a grey bill and an orange belly" — the same bag of words, a different
    bird. Paired with the caption's own image as a non-match, it is a negative that only a model
    binding each colour to its part can reject. ``grey``/``gray`` count as one colour.
    """
    found = [(match.start(), match.end(), match.group(1)) for match in _COLOUR.finditer(caption)]

    def same(a: str, b: str) -> bool:
        return {a, b} <= {"grey", "gray"} or a == b

    for i, (start_a, end_a, first) in enumerate(found):
        for start_b, end_b, second in found[i + 1:]:
            if not same(first, second):
                return caption[:start_a] + second + caption[end_a:start_b] + first + caption[end_b:]
    return None
