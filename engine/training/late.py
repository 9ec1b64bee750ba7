"""`picsift train --mode li`: give a checkpoint a late-interaction (LI) head ("Inflate and Shrink").

Inflate (no teacher): K learnable codes are appended to each encoder's input and the head (codes and
projections) learns from InfoNCE on the in-batch MaxSim matrix. Shrink (`--shrink-from TEACHER --keep M`):
a head that keeps M image tokens learns to reproduce a teacher's in-batch score matrix (softmax
cross-entropy over rows and columns): the teacher is an LI head (the inflated model) or, for a checkpoint
without one, its CE. The encoders stay frozen unless --train-encoders, so the checkpoint's BE and CE (and a
library's vectors and rerank cache) stay valid and only the small head trains; when nothing before the head
trains, every photo and caption goes through the encoders once and the steps run on those outputs.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .train import Trainer, TrainingError, TrainProgress, match_logits


class LateTrainer(Trainer):
    # ----- set-up ------------------------------------------------------------------------------
    def _prepare_stage(self) -> Iterator[TrainProgress]:
        import torch

        from ..models.late import has_head
        from ..models.late_head import head_for, load_head
        from ..models.registry import resolve_folder

        o = self.o
        encoders_train = o.train_encoders or bool(o.init)
        for p in self.model.parameters():
            p.requires_grad_(encoders_train)
        base = load_head(resolve_folder(o.model)) if o.model and has_head(resolve_folder(o.model)) else None
        if o.shrink_from:
            # The student keeps the base head's codes (frozen: they shape the encoders' outputs the teacher
            # was trained on) and starts from its projections; pooling queries are new.
            codes = base.cfg.image_codes if base is not None else 0
            self.head = head_for(self.model.config, width=base.cfg.width if base is not None else o.li_width, codes=codes,
                                 keep_image=o.keep, keep_text=o.keep_text)
            if base is not None:
                own = self.head.state_dict()
                self.head.load_state_dict({k: v for k, v in base.state_dict().items()
                                           if k in own and own[k].shape == v.shape}, strict=False)
            for p in (self.head.image_codes, self.head.text_codes):
                if p is not None:
                    p.requires_grad_(encoders_train)
        else:
            self.head = head_for(self.model.config, width=o.li_width, codes=o.codes, keep_image=o.keep, keep_text=o.keep_text)
        self.head.to(self.device)
        codes_train = any(p is not None and p.requires_grad for p in (self.head.image_codes, self.head.text_codes))
        cached = not encoders_train and not codes_train
        # The encoders' outputs (with the codes) of the training and dev data when nothing before the head
        # trains: (image outputs, text outputs, text mask), else None and the encoders run at each step.
        self.train_out = self.dev_out = None
        self.teacher = None
        if o.shrink_from:
            yield TrainProgress("preparing", 0, o.steps, message=f"loading the teacher {o.shrink_from}")
            self.teacher = _Teacher(o.shrink_from, self.device, self)
            self.teacher_scale = o.teacher_scale or (16.0 if self.teacher.late else 1.0)
        if cached:
            yield TrainProgress("preparing", 0, o.steps, message="encoding the photos and captions once (frozen)")
            with torch.no_grad():
                self.train_out = (self._encode_images(self.pixels), *self._encode_texts(self.ids, self.mask))
                if self.dev is not None:
                    self.dev_out = (self._encode_images(self.dev_pixels),
                                    *self._encode_texts(self.dev_ids, self.dev_mask))
        if self.teacher is not None:
            yield TrainProgress("preparing", 0, o.steps, message="the teacher encodes the photos and captions once")
            self.teacher.precompute(self.pixels, self.ids, self.mask)

    def trainable_parameters(self) -> list:
        params = [p for p in self.model.parameters() if p.requires_grad]
        params += [p for p in self.head.parameters() if p.requires_grad]
        if self.teacher is None:
            params.append(self.log_temperature)  # the inflate loss is InfoNCE with a learnable temperature
        return params

    # ----- encoders with the head's codes --------------------------------------------------------
    def _encode_images(self, pixels, batch: int = 64):
        import torch

        from ..models.late_head import vision_outputs

        return torch.cat([vision_outputs(self.model.vision_model, pixels[a:a + batch].to(self.device),
                                         self.head.image_codes) for a in range(0, len(pixels), batch)])

    def _encode_texts(self, ids, mask, batch: int = 256):
        import torch

        from ..models.late_head import text_outputs

        outs, masks = [], []
        for a in range(0, len(ids), batch):
            h, m = text_outputs(self.model.text_encoder, ids[a:a + batch].to(self.device),
                                mask[a:a + batch].to(self.device), self.head.text_codes)
            outs.append(h)
            masks.append(m)
        return torch.cat(outs), torch.cat(masks)

    def _student(self, caps, unique):
        """The head's (text tokens, mask, image tokens) of a training batch, from the encoders' outputs
        computed once or, when the codes or encoders train, from the encoders now."""
        if self.train_out is not None:
            image_out, text_out, text_mask = self.train_out
            img, txt, tmask = image_out[unique], text_out[caps], text_mask[caps]
        else:
            img = self._encode_images(self.pixels[unique])
            txt, tmask = self._encode_texts(self.ids[caps], self.mask[caps])
        t, tm = self.head.text_side(txt, tmask)
        return t, tm, self.head.image_side(img)

    # ----- the objective ------------------------------------------------------------------------
    def li_loss(self, step: int):
        from ..models.late_head import maxsim_matrix
        from .losses import distillation_loss, score_matrix_nce

        caps, imgs, unique, inverse = self._batch_tensors(step)
        with self._autocast():
            t, tm, i = self._student(caps, unique)
            scores = maxsim_matrix(t, tm, i)  # (B captions, U photos)
        if self.teacher is None:
            ids = imgs.to(self.device)
            return score_matrix_nce(scores, ids, unique.to(self.device), self.log_temperature)
        teacher = self.teacher.matrix(caps, unique)
        return distillation_loss(teacher, scores, self.teacher_scale, self.o.student_scale)

    def train_step(self, step: int) -> dict[str, float]:
        import torch

        torch.manual_seed(self.o.seed * 7_919 + step)
        self.model.train(self.o.train_encoders or bool(self.o.init))
        self.head.train()
        losses = {"li": self._optimise(self.li_loss(step))}
        self.schedule.step()
        return losses

    # ----- the dev figure -----------------------------------------------------------------------
    def dev_figures(self) -> dict[str, float]:
        """LI recall on the dev photos (MaxSim over every pair); with a teacher also how often the student's
        top photo for a caption is the teacher's (`agree`)."""
        import torch

        from .recall import mean_recall, recalls

        self.model.eval()
        self.head.eval()
        with torch.no_grad(), self._autocast():
            scores = self.late_matrix(self.dev_pixels, self.dev_ids, self.dev_mask, self.dev_out)
        r = recalls(scores, self.dev.caption_image)
        out = {f"li_{k}": v for k, v in r.items()}
        out["mean"] = float(mean_recall(r))
        return out

    def late_matrix(self, pixels, ids, mask, outputs=None) -> np.ndarray:
        """(captions, photos) MaxSim scores of the current head; outputs: the encoders' (image outputs, text
        outputs, text mask) when computed before, else the encoders run now."""
        import torch

        from ..models.late_head import maxsim_matrix

        if outputs is None:
            outputs = (self._encode_images(pixels), *self._encode_texts(ids, mask))
        img, text_out, text_mask = outputs
        i = self.head.image_side(img)
        rows = []
        for a in range(0, len(text_out), 128):
            t, tm = self.head.text_side(text_out[a:a + 128], text_mask[a:a + 128])
            rows.append(maxsim_matrix(t, tm, i).float().cpu())
        return torch.cat(rows).numpy()

    # ----- saving and resuming -------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        from ..models.late_head import save_head

        super().save_checkpoint()
        save_head(self.head, self.out)

    def _extra_state(self) -> dict:
        return {"head": self.head.state_dict()}

    def _load_extra_state(self, extra: dict) -> None:
        if "head" not in extra:
            raise TrainingError(f"The run saved in {self.out} has no LI head to resume.")
        self.head.load_state_dict(extra["head"])


class _Teacher:
    """The teacher's in-batch score matrices: MaxSim of its LI head, or its CE's match logits."""

    def __init__(self, source: str, device: str, trainer: Trainer):
        import torch

        from ..models.late import has_head
        from ..models.late_head import load_head
        from ..models.registry import resolve_folder
        from .fresh import load_trainable

        folder = resolve_folder(source)
        self.model, self.processor = load_trainable(source)
        self.model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.late = load_head(folder) if has_head(folder) else None
        if self.late is not None:
            self.late.to(device)
        self.device = device
        if self.processor.tokenizer.get_vocab() != trainer.processor.tokenizer.get_vocab():
            raise TrainingError("The teacher and the student must share a tokenizer (the student starts from the "
                                "teacher's checkpoint by default).")

    def precompute(self, pixels, ids, mask) -> None:
        """Everything of the teacher that one photo or one caption determines, once: LI tokens, or for a CE
        teacher the vision encoder's tokens."""
        import torch

        from ..models.late_head import text_outputs, vision_outputs

        with torch.no_grad():
            if self.late is not None:
                self.image = torch.cat([self.late.image_side(vision_outputs(
                    self.model.vision_model, pixels[a:a + 64].to(self.device), self.late.image_codes))
                    for a in range(0, len(pixels), 64)])
                outs, masks = [], []
                for a in range(0, len(ids), 256):
                    h, m = text_outputs(self.model.text_encoder, ids[a:a + 256].to(self.device),
                                        mask[a:a + 256].to(self.device), self.late.text_codes)
                    t, tm = self.late.text_side(h, m)
                    outs.append(t)
                    masks.append(tm)
                width = max(o.shape[1] for o in outs)
                self.text = torch.cat([torch.nn.functional.pad(o, (0, 0, 0, width - o.shape[1])) for o in outs])
                self.text_mask = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks])
            else:
                self.image = torch.cat([self.model.vision_model(pixel_values=pixels[a:a + 64].to(self.device))
                                        .last_hidden_state for a in range(0, len(pixels), 64)])
        self.ids, self.mask = ids, mask

    def matrix(self, caps, unique):
        """(B, U) teacher scores of a batch's captions against its photos."""
        import torch

        from ..models.late_head import maxsim_matrix

        with torch.no_grad():
            if self.late is not None:
                return maxsim_matrix(self.text[caps], self.text_mask[caps], self.image[unique])
            b, u = len(caps), len(unique)
            t = caps.repeat_interleave(u)
            i = unique.repeat(b)
            logits = match_logits(self.model, self.ids[t].to(self.device), self.mask[t].to(self.device),
                                  self.image[i.to(self.image.device)])
            return (logits[:, 1] - logits[:, 0]).view(b, u)
