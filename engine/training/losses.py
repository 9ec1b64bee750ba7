"""The training objectives of "Retrieve Fast, Rerank Smart": the BE's and the CE's.

BE: batch-hard triplet loss (VSE++ max violation) on cosine distance in both
directions, or InfoNCE with a learnable temperature (BLIP's ITC). Items that
share an image are never each other's negatives. CE: two-way cross-entropy on
the matching head's logits. All take L2-normalised vectors and image ids, so
a batch may hold several captions of one photo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def same_image(text_ids: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
    """(T, I) bool: caption t and image i show the same photo."""
    return text_ids[:, None] == image_ids[None, :]


def triplet_max_violation(text: torch.Tensor, image: torch.Tensor, text_ids: torch.Tensor,
                          image_ids: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Batch-hard triplet loss on cosine distance, both directions, for a batch of B (caption, image) pairs.

    text[b] and image[b] are a positive pair (rows of L2-normalised vectors); text_ids/image_ids name each
    row's photo. For each pair: relu(d(t_b, i_b) - d(t_b, hardest other image) + margin) plus
    relu(d(t_b, i_b) - d(hardest other caption, i_b) + margin), where "other" excludes every item of the
    same photo; the mean over pairs. A pair with no valid negative in one direction adds nothing there.
    """
    dist = 1.0 - text @ image.T  # (B, B)
    pos = dist.diagonal()
    neg_mask = ~same_image(text_ids, image_ids)
    inf = torch.finfo(dist.dtype).max
    hard_image = dist.masked_fill(~neg_mask, inf).amin(dim=1)  # caption b -> nearest wrong image
    hard_text = dist.masked_fill(~neg_mask, inf).amin(dim=0)  # image b -> nearest wrong caption
    loss_t = torch.where(hard_image < inf, F.relu(pos - hard_image + margin), torch.zeros_like(pos))
    loss_i = torch.where(hard_text < inf, F.relu(pos - hard_text + margin), torch.zeros_like(pos))
    return (loss_t + loss_i).mean()


def info_nce(text: torch.Tensor, image: torch.Tensor, text_ids: torch.Tensor, image_ids: torch.Tensor,
             log_temperature: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss (BLIP's ITC) with a learnable temperature: exp(log_temperature), clamped
    to [0.001, 0.5]. Every item of the same photo is a positive; the targets spread evenly over them."""
    temp = log_temperature.exp().clamp(0.001, 0.5)
    logits = text @ image.T / temp
    positives = same_image(text_ids, image_ids).float()
    t2i = -(F.log_softmax(logits, dim=1) * positives / positives.sum(1, keepdim=True)).sum(1).mean()
    i2t = -(F.log_softmax(logits.T, dim=1) * positives.T / positives.T.sum(1, keepdim=True)).sum(1).mean()
    return (t2i + i2t) / 2


def matching_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Two-way cross-entropy on ITM logits (B, 2); label 1 is a match."""
    return F.cross_entropy(logits, labels.long())


def pick_negatives(text_ids: torch.Tensor, image_ids: torch.Tensor, generator: torch.Generator,
                   swap_text_probability: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """One random negative per positive pair b of a batch: (text row, image row) indices into the batch.

    With probability swap_text_probability the caption is swapped (another photo's caption with image b),
    otherwise the image (caption b with another photo's image), drawn at random among the batch's items of
    other photos. A pair whose batch holds no other photo keeps its own indices (the caller drops it)."""
    b = len(text_ids)
    other = ~same_image(text_ids, image_ids)  # (B, B): caption row x image column of different photos
    swap_text = torch.rand(b, generator=generator) < swap_text_probability
    noise = torch.rand(b, b, generator=generator)
    t_rows = torch.arange(b)
    i_rows = torch.arange(b)
    for j in range(b):
        candidates = other[:, j] if swap_text[j] else other[j, :]
        if not bool(candidates.any()):
            continue
        pick = int((noise[:, j] if swap_text[j] else noise[j, :]).masked_fill(~candidates, -1.0).argmax())
        if swap_text[j]:
            t_rows[j] = pick
        else:
            i_rows[j] = pick
    return t_rows, i_rows


def itc_negatives(text: torch.Tensor, image: torch.Tensor, text_ids: torch.Tensor, image_ids: torch.Tensor,
                  log_temperature: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BLIP's ITM negatives for a batch of B (caption, image) pairs: (for each pair's image, the batch row of a
    negative caption; for each pair's caption, the batch row of a negative image), each drawn from the softmax
    of the in-batch similarity text @ image.T / temperature with every item of the same photo masked, so hard
    negatives come often and a same-photo pair never. -1 where the batch holds no other photo."""
    temp = log_temperature.exp().clamp(0.001, 0.5)
    sim = (text.float() @ image.float().T) / temp  # (B, B): caption row x image column
    other = ~same_image(text_ids, image_ids)

    def draw(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        weights = (torch.softmax(logits, dim=1) + 1e-4) * allowed  # the floor keeps every allowed item possible
        rows = torch.full((len(logits),), -1, dtype=torch.long)
        ok = allowed.any(dim=1)
        if bool(ok.any()):
            rows[ok] = torch.multinomial(weights[ok], 1, generator=generator).squeeze(1)
        return rows

    image_rows = draw(sim, other)  # caption b -> a negative image
    text_rows = draw(sim.T, other.T)  # image b -> a negative caption
    return text_rows, image_rows


def false_negatives(images_for_caption: torch.Tensor, captions_for_image: torch.Tensor, captions: list[str],
                    caption_image: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which mined negatives are true matches after all: (images_for_caption's, captions_for_image's) bool masks.
    A negative image is false when the caption says what one of that photo's own captions says; a negative
    caption, when it says what one of the photo's captions says. What a caption says is its meaning key
    (`caption_key`): for the shapes set the scene it describes, otherwise its words, lower-cased."""
    keys = [caption_key(c) for c in captions]
    said: list[set] = [set() for _ in range(max(caption_image) + 1 if caption_image else 0)]
    for k, i in zip(keys, caption_image):
        said[i].add(k)
    false_i = torch.tensor([[keys[c] in said[int(i)] for i in row] for c, row in enumerate(images_for_caption.tolist())],
                           dtype=torch.bool).reshape(images_for_caption.shape)
    false_t = torch.tensor([[keys[int(c)] in said[i] for c in row] for i, row in enumerate(captions_for_image.tolist())],
                           dtype=torch.bool).reshape(captions_for_image.shape)
    return false_i, false_t


def caption_key(caption: str):
    """What a caption says, for telling a false negative: the scene, when it is a shapes caption (any of its
    paraphrases gives the same key), else its words lower-cased."""
    from .shapes import parse_caption

    try:
        return parse_caption(caption).key()
    except ValueError:
        return " ".join(caption.lower().split())


def mine_hard_negatives(text: torch.Tensor, image: torch.Tensor, caption_image: torch.Tensor,
                        top: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """The BE's nearest non-matching items over a whole training set: (for each caption, the `top` most similar
    images of other photos; for each image, the `top` most similar captions of other photos), best first.
    text (C, D) and image (I, D) are L2-normalised BE vectors; caption_image[c] is caption c's photo."""
    sim = text @ image.T  # (C, I)
    sim = sim.masked_fill(caption_image[:, None] == torch.arange(len(image))[None, :], float("-inf"))
    images_for_caption = sim.topk(min(top, max(1, len(image) - 1)), dim=1).indices
    captions_for_image = sim.T.topk(min(top, len(text)), dim=1).indices
    return images_for_caption, captions_for_image


def score_matrix_nce(scores: torch.Tensor, text_ids: torch.Tensor, image_ids: torch.Tensor,
                     log_temperature: torch.Tensor) -> torch.Tensor:
    """InfoNCE (as `info_nce`) on a precomputed (T, I) score matrix: the LI stage's MaxSim scores."""
    temp = log_temperature.exp().clamp(0.001, 0.5)
    logits = scores / temp
    positives = same_image(text_ids, image_ids).float()
    t2i = -(F.log_softmax(logits, dim=1) * positives / positives.sum(1, keepdim=True)).sum(1).mean()
    i2t = -(F.log_softmax(logits.T, dim=1) * positives.T / positives.T.sum(1, keepdim=True)).sum(1).mean()
    return (t2i + i2t) / 2


def distillation_loss(teacher: torch.Tensor, student: torch.Tensor, teacher_scale: float,
                      student_scale: float) -> torch.Tensor:
    """Inflate and Shrink's distillation: cross-entropy between softmax(teacher * teacher_scale) and
    softmax(student * student_scale), over the rows (each caption's photos) and over the columns (each
    photo's captions) of the in-batch (T, I) score matrices, each weighted 0.5. The teacher gets no
    gradient."""
    t = teacher.detach().float() * teacher_scale
    s = student.float() * student_scale
    rows = -(F.softmax(t, dim=1) * F.log_softmax(s, dim=1)).sum(1).mean()
    cols = -(F.softmax(t, dim=0) * F.log_softmax(s, dim=0)).sum(0).mean()
    return 0.5 * rows + 0.5 * cols


def rerank_distillation_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """A shrunk CE's distillation over each caption's candidates (rows of (B, G) match logits, log-odds):
    softmax cross-entropy between the teacher's and the student's order of the candidates, plus binary
    cross-entropy of the student's match probability against the teacher's, so that the probabilities the
    product shows keep their meaning. The teacher gets no gradient."""
    t = teacher.detach().float()
    s = student.float()
    order = -(F.softmax(t, dim=1) * F.log_softmax(s, dim=1)).sum(1).mean()
    match = F.binary_cross_entropy_with_logits(s, torch.sigmoid(t))
    return order + match
