"""`picsift train --mode shrink-ce`: a CE that reads the patch grid pooled (577 -> 145 image tokens for BLIP
base at --pool 2), distilled from the full CE (engine.models.shrunk_ce).

The student is the checkpoint itself with only its CE's own weights trainable (the text encoder's
cross-attention layers and the matching head); the vision encoder and everything the BE uses stay frozen, so
every photo goes through the vision encoder once. Each caption's candidates are what the CE reranks in the
product: the BE's top G photos of the training set (its own photo among them). The teacher (the full CE of
--shrink-from, by default the same checkpoint) scores them once each, on the full tokens; the student learns
its order (softmax cross-entropy over each caption's candidates) and its match probabilities (binary
cross-entropy against the teacher's), so the window's scores and a minimum-score cut-off mean what they
meant. The output folder is the checkpoint's own files with the overlay beside them: a library indexed
with the checkpoint keeps its vectors and fills only its rerank cache again, at the pooled size.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

from .train import Trainer, TrainingError, TrainProgress, match_logits

CANDIDATES = 8  # the BE's top G photos each caption's candidate list holds
RANDOM_CANDIDATES = 8  # and this many other photos drawn at random: the easy negatives keep their low scores


class ShrinkCeTrainer(Trainer):
    # ----- set-up ------------------------------------------------------------------------------
    def _prepare_stage(self) -> Iterator[TrainProgress]:
        import torch

        from ..models.registry import resolve_folder
        from ..models.shrunk_ce import pooled_tokens, trains
        from .fresh import load_trainable

        o = self.o
        self.base_folder = Path(resolve_folder(o.model))
        for name, p in self.model.named_parameters():
            p.requires_grad_(trains(name))
        vc = self.model.config.vision_config
        tokens = (vc.image_size // vc.patch_size) ** 2 + 1
        try:
            pooled_tokens(tokens, o.pool)
        except ValueError as exc:
            raise TrainingError(f"--pool {o.pool} does not fit this model's patch grid: {exc}.") from exc
        yield TrainProgress("preparing", 0, o.steps, message="the vision encoder reads every photo once (frozen)")
        self.model.eval()
        with torch.no_grad(), self._autocast():
            self.full = self._vision(self.model, self.pixels)
            self.pooled = self._pool(self.full)
            self.dev_pooled = self._pool(self._vision(self.model, self.dev_pixels)) if self.dev is not None else None
            yield TrainProgress("preparing", 0, o.steps, message="the BE picks each caption's candidates")
            img = self.image_vectors(self.full)
            txt = torch.cat([self.text_vectors(self.ids[a:a + 256], self.mask[a:a + 256])
                             for a in range(0, len(self.ids), 256)])
        self.candidates = _candidates(txt.float().cpu(), img.float().cpu(), self.caption_image, CANDIDATES,
                                      RANDOM_CANDIDATES, o.seed)
        teacher = o.shrink_from or o.model
        if Path(resolve_folder(teacher)) == self.base_folder:
            yield TrainProgress("preparing", 0, o.steps, message="the full CE of the checkpoint is the teacher")
            self.teacher, _ = load_trainable(o.model)
            self.teacher_full = self.full
        else:
            yield TrainProgress("preparing", 0, o.steps, message=f"loading the teacher {teacher}")
            self.teacher, processor = load_trainable(teacher)
            if processor.tokenizer.get_vocab() != self.processor.tokenizer.get_vocab():
                raise TrainingError("The teacher and the student must share a tokenizer.")
            self.teacher.to(self.device)
            with torch.no_grad():
                self.teacher_full = self._vision(self.teacher, self._pixels(self.data.images, self.teacher, processor))
        self.teacher.to(self.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        # the teacher's logits of each caption's candidates, computed the first time a batch holds it
        self.teacher_logits = torch.full(self.candidates.shape, float("nan"))
        if self.dev is not None and not o.resume:
            start = self.dev_figures()["mean"]
            yield TrainProgress("preparing", 0, o.steps, message=f"dev mean recall of the CE reading the pooled "
                                                                 f"grid before distillation: {start:.3f}")

    def _vision(self, model, pixels, batch: int = 64):
        import torch

        return torch.cat([model.vision_model(pixel_values=pixels[a:a + batch].to(self.device)).last_hidden_state
                          for a in range(0, len(pixels), batch)])

    def _pool(self, tokens):
        from ..models.blip_ce import pool_grid

        return pool_grid(tokens, self.o.pool)

    def trainable_parameters(self) -> list:
        return [p for p in self.model.parameters() if p.requires_grad]

    # ----- the objective ------------------------------------------------------------------------
    @staticmethod
    def _logit(model, ids, mask, tokens):
        logits = match_logits(model, ids, mask, tokens)
        return logits[:, 1] - logits[:, 0]  # the match probability is its sigmoid

    def _pairs(self, caps):
        """Flattened (caption rows, photo rows) of the batch's captions and their candidates."""
        import torch

        cand = torch.as_tensor(self.candidates[caps.numpy()])
        return caps.repeat_interleave(cand.shape[1]), cand.reshape(-1), cand.shape

    def teacher_scores(self, caps):
        import torch

        todo = caps[torch.isnan(self.teacher_logits[caps]).any(dim=1)]
        if len(todo):
            t_rows, i_rows, shape = self._pairs(todo)
            with torch.no_grad(), self._autocast():
                out = self._logit(self.teacher, self.ids[t_rows].to(self.device), self.mask[t_rows].to(self.device),
                                  self.teacher_full[i_rows.to(self.teacher_full.device)])
            self.teacher_logits[todo] = out.float().cpu().view(shape)
        return self.teacher_logits[caps].to(self.device)

    def shrink_loss(self, step: int):
        import torch

        from .losses import rerank_distillation_loss

        caps = torch.as_tensor(self.batch(step))
        teacher = self.teacher_scores(caps)
        t_rows, i_rows, shape = self._pairs(caps)
        with self._autocast():
            student = self._logit(self.model, self.ids[t_rows].to(self.device), self.mask[t_rows].to(self.device),
                                  self.pooled[i_rows.to(self.pooled.device)]).view(shape)
        return rerank_distillation_loss(teacher, student)

    def train_step(self, step: int) -> dict[str, float]:
        import torch

        torch.manual_seed(self.o.seed * 7_919 + step)
        self.model.train()
        losses = {"shrink": self._optimise(self.shrink_loss(step))}
        self.schedule.step()
        return losses

    # ----- the dev figure -----------------------------------------------------------------------
    def dev_figures(self) -> dict[str, float]:
        """The shrunk CE's recall over every dev pair, on the pooled tokens."""
        import torch

        from .recall import mean_recall, recalls

        self.model.eval()
        with torch.no_grad(), self._autocast():
            r = recalls(self._ce_matrix(self.dev_pooled), self.dev.caption_image)
        out = {f"ce_{k}": v for k, v in r.items()}
        out["mean"] = float(mean_recall(r))
        return out

    # ----- saving -------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """The checkpoint's own files, copied unchanged (its identity stays), and the overlay beside them."""
        from ..models import shrunk_ce
        from ..models.late import LI_FILES

        self.out.mkdir(parents=True, exist_ok=True)
        for f in self.base_folder.iterdir():
            if f.is_file() and f.name not in shrunk_ce.SHRUNK_FILES and f.name != "training.json":
                target = self.out / f.name
                if not target.exists() or f.name in LI_FILES:
                    shutil.copy2(f, target)
        shrunk_ce.save(self.model, self.out, shrunk_ce.ShrunkConfig(pool=self.o.pool,
                                                                    teacher=self.o.shrink_from or self.o.model))


def _candidates(text, image, caption_image, hard: int, random: int, seed: int) -> np.ndarray:
    """(captions, hard + random) photo rows: the BE's top `hard` photos of each caption (its own photo put in
    last when the BE left it out), then `random` photos drawn at random from the rest (seeded)."""
    import torch

    n = image.shape[0]
    hard = min(hard, n)
    top = torch.topk(text @ image.T, hard, dim=1).indices.numpy().copy()
    own = np.asarray(caption_image)
    missing = ~(top == own[:, None]).any(axis=1)
    top[missing, -1] = own[missing]
    random = min(random, n - hard)
    if random <= 0:
        return top
    rng = np.random.default_rng([seed, 17])
    extra = np.empty((len(top), random), dtype=top.dtype)
    for row, chosen in enumerate(top):
        pool = np.setdiff1d(np.arange(n), chosen, assume_unique=False)
        extra[row] = rng.choice(pool, size=random, replace=False)
    return np.concatenate([top, extra], axis=1)
