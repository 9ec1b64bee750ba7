"""`picsift train`: fine-tune a BLIP retrieval model as a BE, a CE, or both on shared weights (Joint).

An engine generator like indexing: `Trainer.run()` yields TrainProgress events, so the terminal draws a
progress bar from them and a window could drive the same run. A run is resumable: its state (weights,
optimiser, schedule, step, best dev figure) is saved every `checkpoint_every` steps and when cancelled,
and the data order and negative sampling are functions of (seed, step), so a resumed run goes on exactly
where the saved one stood, repeating nothing from the start.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import PicsiftError
from ..jobs import CancelToken

MODES = ("be", "ce", "joint", "li", "shrink-ce")
BE_LOSSES = ("triplet", "infonce")
ITM_NEGATIVES = ("itc", "random")
IMAGE_NEGATIVES = ("none", "flip")
STATE_DIR = ".picsift-train"  # inside the output folder: the resumable state, not part of the checkpoint


def swap_kinds(text_negatives: str) -> tuple[str, ...]:
    """The kinds of text negative --text-negatives asks for: "swap" is every kind of exchange (perturb.KINDS),
    "replace" every kind of replacement (perturb.REPLACE_KINDS), "none" none, else a comma list of those
    two words and of kinds ("swap,replace", "relation,colour-replace")."""
    from .perturb import KINDS, REPLACE_KINDS

    if text_negatives == "none":
        return ()
    groups = {"swap": KINDS, "replace": REPLACE_KINDS}
    kinds: list[str] = []
    bad = []
    for k in (k.strip() for k in text_negatives.split(",")):
        if not k:
            continue
        if k in groups:
            kinds += groups[k]
        elif k in KINDS or k in REPLACE_KINDS:
            kinds.append(k)
        else:
            bad.append(k)
    if bad or not kinds:
        raise TrainingError(f"--text-negatives must be swap, replace, none or a comma list of those and of "
                            f"{', '.join(KINDS + REPLACE_KINDS)}, not '{text_negatives}'.")
    return tuple(dict.fromkeys(kinds))


@dataclass
class SwapNegatives:
    """The training captions' text negatives: swap rows start[c]..start[c]+count[c] belong to caption c."""

    ids: object  # (S, L) token ids
    mask: object
    kinds: list[str]  # each row's kind of exchange (perturb.KINDS)
    start: object  # (C,) long
    count: object  # (C,) long
    # each row's chance among its caption's rows (None: alike); replacements give each kind an equal share
    weight: object = None

    def draw(self, caps, gen):
        """One row for each caption of `caps` that has any, and the mask of those captions."""
        import torch

        has = self.count[caps] > 0
        if self.weight is None:
            pick = (torch.rand(len(caps), generator=gen) * self.count[caps]).long()
            return (self.start[caps] + pick)[has], has
        rows = []
        for c in caps[has].tolist():
            a = int(self.start[c])
            w = self.weight[a:a + int(self.count[c])]
            rows.append(a + int(torch.multinomial(w, 1, generator=gen)))
        return torch.as_tensor(rows, dtype=torch.long), has


@dataclass
class MirrorPairs:
    """--image-negatives flip: for each training caption, the axis its photo is flipped along (0 none,
    1 horizontal, 2 vertical; perturb.mirror) and the tokens of the caption the flipped photo shows."""

    ids: object  # (C, L): row c is caption c's mirrored caption (its own tokens where axis[c] is 0)
    mask: object
    axis: object  # (C,) long


class TrainingError(PicsiftError):
    """A training run cannot start or go on; the text says why."""


@dataclass
class TrainOptions:
    data: str
    out: str
    mode: str = "joint"
    model: str | None = None  # hub id or folder of a BLIP retrieval checkpoint
    init: str | None = None  # "small" | "tiny": a fresh model, vocabulary from the data
    image_size: int | None = None  # fresh models only
    split: str | None = None  # None: "train" when the data has that split, else every row
    dev_split: str | None = "dev"
    steps: int = 1000
    batch_size: int = 32
    lr: float | None = None  # default: 5e-4 from scratch; fine-tuning 2e-5 (be), 5e-5 (ce, joint)
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    be_loss: str = "triplet"
    margin: float = 0.1
    hard_negatives: float = 0.0
    # The CE's negatives: "itc" samples one photo per caption and one caption per photo from the in-batch BE
    # similarity (BLIP's ITM), "random" draws one random in-batch swap per pair (the method's reference code)
    itm_negatives: str = "itc"
    # "swap": each caption also meets its own photo with two of its parts exchanged (engine.training.perturb);
    # a comma list of kinds ("relation", "colour,relation") exchanges only those; "none": no text negatives
    text_negatives: str = "swap"
    # "flip": a caption naming a left/right (above/below) relation also meets its photo flipped along that
    # axis, as a negative, and the flipped photo meets the caption with those words swapped, as a positive:
    # only the objects' places tell them apart (engine.training.perturb.mirror)
    image_negatives: str = "none"
    # "shift": each time a step reads a training photo it is shifted and scaled by a few percent
    # (engine.training.augment), so the CE cannot learn the training photos' pixels by heart
    augment: str = "none"
    eval_every: int = 100
    checkpoint_every: int | None = None  # default: eval_every
    dev_max_images: int = 100  # the dev figure reads at most this many dev photos (the CE scores all pairs)
    max_text_tokens: int = 40
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    # --mode li (engine.training.late): inflate an LI head, or shrink one from a teacher
    shrink_from: str | None = None  # teacher: a checkpoint with an LI head, or any BLIP checkpoint (its CE)
    keep: int | None = None  # image tokens the LI head keeps (None: every output token)
    keep_text: int | None = None
    codes: int = 32  # learnable codes appended to each encoder's input when inflating
    li_width: int = 128
    train_encoders: bool = False  # LI runs keep the checkpoint's encoders (its BE and CE) unless asked
    teacher_scale: float | None = None  # default 16 for an LI teacher's scores, 1 for a CE's logits
    student_scale: float = 16.0
    # --mode shrink-ce (engine.training.shrink_ce): a CE reading the patch grid pooled, from the full CE
    pool: int = 2

    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.mode == "li" and not self.train_encoders and not self.init:
            return 1e-3  # only the small head (and codes) train
        if self.mode == "shrink-ce":
            return 1e-3  # only the CE's cross-attention and matching head train
        if self.init:
            return 5e-4
        return 2e-5 if self.mode == "be" else 5e-5

    def check(self) -> None:
        if self.mode not in MODES:
            raise TrainingError(f"--mode must be one of {', '.join(MODES)}, not '{self.mode}'.")
        if self.be_loss not in BE_LOSSES:
            raise TrainingError(f"--be-loss must be one of {', '.join(BE_LOSSES)}, not '{self.be_loss}'.")
        if self.itm_negatives not in ITM_NEGATIVES:
            raise TrainingError(f"--itm-negatives must be one of {', '.join(ITM_NEGATIVES)}, not "
                                f"'{self.itm_negatives}'.")
        swap_kinds(self.text_negatives)  # raises TrainingError with the reason
        if self.image_negatives not in IMAGE_NEGATIVES:
            raise TrainingError(f"--image-negatives must be one of {', '.join(IMAGE_NEGATIVES)}, not "
                                f"'{self.image_negatives}'.")
        from .augment import AUGMENTS

        if self.augment not in AUGMENTS:
            raise TrainingError(f"--augment must be one of {', '.join(AUGMENTS)}, not '{self.augment}'.")
        if self.mode not in ("li", "shrink-ce") and self.shrink_from:
            raise TrainingError("--shrink-from belongs to --mode li and --mode shrink-ce.")
        if self.mode != "li" and self.keep:
            raise TrainingError("--keep belongs to --mode li.")
        if self.model is None and self.init is None and self.mode in ("li", "shrink-ce") and self.shrink_from:
            self.model = self.shrink_from  # the student starts from the teacher's weights
        if self.mode == "shrink-ce" and self.init:
            raise TrainingError("--mode shrink-ce shrinks an existing checkpoint's CE: give --model, not --init.")
        if self.pool < 2:
            raise TrainingError("--pool must be at least 2 (2: a quarter of the patch tokens).")
        if (self.model is None) == (self.init is None):
            raise TrainingError("Give either --model (a checkpoint to fine-tune) or --init small|tiny (a fresh model).")
        for name in ("keep", "keep_text", "li_width"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be at least 1.")
        if self.codes < 0:
            raise TrainingError("--codes must not be negative.")
        for name in ("steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be at least 1.")
        if self.batch_size < 2:
            raise TrainingError("--batch-size must be at least 2: negatives come from the batch.")
        if not 0.0 <= self.hard_negatives <= 1.0:
            raise TrainingError("--hard-negatives is a probability between 0 and 1.")
        if self.hard_negatives > 0 and self.itm_negatives != "random":
            raise TrainingError("--hard-negatives mines the BE's nearest items for --itm-negatives random; "
                                "--itm-negatives itc already draws its negatives from the BE's similarity.")
        if self.margin < 0:
            raise TrainingError("--margin must not be negative.")


@dataclass
class TrainProgress:
    phase: str  # "preparing" | "training" | "evaluating" | "saved" | "done" | "cancelled"
    step: int
    steps: int
    losses: dict[str, float] = field(default_factory=dict)
    dev: dict[str, float] | None = None  # the last dev figures
    best: float | None = None  # best dev figure so far (`mean` of dev_figures)
    message: str = ""


class Trainer:
    swaps: SwapNegatives | None = None
    replacements: SwapNegatives | None = None  # --text-negatives replace (perturb.replacements)
    mirrors: MirrorPairs | None = None

    def __init__(self, options: TrainOptions, cancel: CancelToken | None = None):
        options.check()
        self.o = options
        self.cancel = cancel or CancelToken()
        self.out = Path(options.out).expanduser().resolve()
        self.state_dir = self.out / STATE_DIR

    # ----- set-up ----------------------------------------------------------
    def _prepare(self) -> Iterator[TrainProgress]:
        import torch

        from ..models.device import pick_device
        from .datasets import read_dataset
        from .fresh import fresh_model, load_trainable

        o = self.o
        state_file = self.state_dir / "state.pt"
        if o.resume and not state_file.is_file():
            raise TrainingError(f"Nothing to resume in {self.out}: no saved training state there.")
        if not o.resume and self.out.exists() and any(p.name != STATE_DIR for p in self.out.iterdir()):
            raise TrainingError(f"{self.out} is not empty; give a new --out folder, or --resume to continue the "
                                "run saved there.")
        yield TrainProgress("preparing", 0, o.steps, message="reading the dataset")
        names = read_dataset(o.data, check_images=False).split_names()
        self.split = o.split or ("train" if "train" in names else None)
        self.data = read_dataset(o.data, split=self.split)
        self.dev = None
        if o.dev_split and o.dev_split in names and o.dev_split != self.split:
            dev = read_dataset(o.data, split=o.dev_split)
            self.dev = dev.subset(range(min(o.dev_max_images, len(dev.images))))
        self.device = pick_device(o.device)[0]
        torch.manual_seed(o.seed)
        if o.init:
            self.model, self.processor = fresh_model(o.init, self.data.captions, seed=o.seed, image_size=o.image_size)
        else:
            self.model, self.processor = load_trainable(o.model)
        self.model.to(self.device)
        yield TrainProgress("preparing", 0, o.steps, message=f"decoding {len(self.data.images):,} photos")
        self.pixels = self._pixels(self.data.images)
        self.ids, self.mask, self.swaps, self.mirrors = self._caption_tokens()
        self.caption_image = torch.as_tensor(self.data.caption_image)
        if self.dev is not None:
            self.dev_pixels = self._pixels(self.dev.images)
            self.dev_ids, self.dev_mask = self._tokens(self.dev.captions)
            from .twins import read_twins, twin_triples

            # the dev split's near-miss twins (the shapes set has them): the CE's dev figure counts its pair
            # accuracy, so the checkpoint kept is one that reads what a bag of words cannot
            self.dev_twins = twin_triples(read_twins(o.data, self.dev.images), self.dev.caption_image)
        self.log_temperature = torch.nn.Parameter(torch.tensor(math.log(0.07), device=self.device))
        self.amp = None
        if self.device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            self.amp = dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        yield from self._prepare_stage()
        params = self.trainable_parameters()
        self.optimizer = torch.optim.AdamW(params, lr=o.learning_rate(), weight_decay=o.weight_decay, eps=1e-6)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: max(0.0, 1.0 - s / o.steps))
        self.step = 0
        self.seconds = 0.0  # training time over every segment of the run (resumed ones included)
        self.hard_pool = None  # (images for each caption, captions for each image): the BE's nearest negatives
        self.false_negatives: dict | None = None  # of the last mining: negatives mined, and how many were matches
        self.best: float | None = None
        self.history: list[dict] = []
        if o.resume:
            self._load_state(state_file)

    def _prepare_stage(self) -> Iterator[TrainProgress]:
        """What a kind of run adds once the model and data are ready (the LI runs: head, teacher, caches)."""
        return iter(())

    def trainable_parameters(self) -> list:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.o.mode != "ce" and self.o.be_loss == "infonce":
            params.append(self.log_temperature)
        return params

    def _pixels(self, paths, model=None, processor=None):
        """Model input pixels of photos, by the trained model's processor (or another model's: a teacher's)."""
        import torch

        from ..index.imaging import open_photo

        model, processor = model or self.model, processor or self.processor
        size = int(model.config.vision_config.image_size)
        chunks = []
        for a in range(0, len(paths), 64):
            images = [open_photo(str(p), size).image for p in paths[a:a + 64]]
            chunks.append(processor(images=images, return_tensors="pt")["pixel_values"])
        return torch.cat(chunks) if chunks else torch.zeros(0)

    def _caption_tokens(self):
        """Token ids and masks of the training captions, their text negatives (--text-negatives swap) as
        SwapNegatives and their mirrored captions (--image-negatives flip) as MirrorPairs, tokenised together
        so that all pad to one length; swaps and mirrors are None when not asked for."""
        import torch

        from .perturb import KINDS, MIRROR_AXES, mirror, perturb, replacement_vocabulary, replacements

        captions = list(self.data.captions)
        allowed = swap_kinds(self.o.text_negatives) if self.o.mode in ("ce", "joint") else ()
        swap, replace = [k for k in allowed if k in KINDS], [k for k in allowed if k not in KINDS]
        flips = self.o.image_negatives == "flip" and self.o.mode in ("ce", "joint")
        texts, kinds, start, count = [], [], [], []
        for c in captions if swap else ():
            swapped = {k: t for k, t in perturb(c).items() if k in swap}
            start.append(len(texts))
            count.append(len(swapped))
            texts.extend(swapped.values())
            kinds.extend(swapped)
        s = len(texts)
        r_kinds, r_start, r_count, r_weight = [], [], [], []
        vocabulary = {k: v for k, v in replacement_vocabulary(captions).items() if k in replace} if replace else {}
        for c in captions if replace else ():
            found = replacements(c, vocabulary)
            r_start.append(len(texts) - s)
            r_count.append(sum(map(len, found.values())))
            for kind, rows in found.items():
                texts.extend(rows)
                r_kinds.extend([kind] * len(rows))
                r_weight.extend([1.0 / (len(rows) * len(found))] * len(rows))
        axes, mirrored = [], []
        for c in captions if flips else ():
            m = mirror(c)
            axes.append(0 if m is None else 1 + MIRROR_AXES.index(m[0]))
            mirrored.append(c if m is None else m[1])
        ids, mask = self._tokens(captions + texts + mirrored)
        n, t = len(captions), len(texts)
        swaps = SwapNegatives(ids[n:n + s], mask[n:n + s], kinds, torch.as_tensor(start),
                              torch.as_tensor(count)) if swap else None
        self.replacements = SwapNegatives(ids[n + s:n + t], mask[n + s:n + t], r_kinds, torch.as_tensor(r_start),
                                          torch.as_tensor(r_count),
                                          torch.as_tensor(r_weight, dtype=torch.float)) if replace else None
        mirrors = MirrorPairs(ids[n + t:], mask[n + t:], torch.as_tensor(axes, dtype=torch.long)) if flips else None
        return ids[:n], mask[:n], swaps, mirrors

    def _tokens(self, captions):
        enc = self.processor.tokenizer(list(captions), padding="longest", truncation=True,
                                       max_length=self.o.max_text_tokens, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    # ----- state -------------------------------------------------------------
    def _state(self) -> dict:
        return {"step": self.step, "best": self.best, "history": self.history, "seconds": self.seconds,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "log_temperature": self.log_temperature.detach().cpu(),
                "hard_pool": self.hard_pool, "false_negatives": self.false_negatives, "extra": self._extra_state(),
                "options": self._fingerprint()}

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, extra: dict) -> None:
        pass

    def _fingerprint(self) -> dict:
        o = self.o
        return {k: getattr(o, k) for k in ("mode", "steps", "batch_size", "seed", "be_loss", "split", "init",
                                           "hard_negatives", "itm_negatives", "text_negatives", "image_negatives", "eval_every", "shrink_from",
                                           "keep", "keep_text",
                                           "codes", "li_width", "train_encoders")} | (
            {"pool": o.pool} if o.mode == "shrink-ce" else {}) | (
            {"augment": o.augment} if o.augment != "none" else {}) | {
            "data": str(Path(o.data).expanduser().resolve()), "captions": len(self.data.captions)}

    def _save_state(self) -> None:
        import torch

        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / "state.pt.tmp"
        torch.save(self._state(), tmp)
        os.replace(tmp, self.state_dir / "state.pt")  # a kill during the save leaves the previous state whole

    def _load_state(self, path: Path) -> None:
        import torch

        state = torch.load(path, map_location=self.device, weights_only=False)
        mine, saved = self._fingerprint(), state.get("options", {})
        differ = [k for k in mine if saved.get(k) != mine[k]]
        if differ:
            raise TrainingError(f"The run saved in {self.out} was started with other settings ({', '.join(differ)}); "
                                "resume it with the same ones or start a new --out folder.")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        with torch.no_grad():
            self.log_temperature.copy_(state["log_temperature"].to(self.device))
        self.step, self.best, self.history = state["step"], state["best"], state["history"]
        self.hard_pool = state.get("hard_pool")
        self.false_negatives = state.get("false_negatives")
        self._load_extra_state(state.get("extra") or {})
        self.seconds = float(state.get("seconds", 0.0))

    # ----- the data order: a function of (seed, step) ----------------------
    def batch(self, step: int) -> np.ndarray:
        """Caption indices of the batch at `step`: epochs are seeded permutations of every caption."""
        n, b = len(self.data.captions), self.o.batch_size
        start = step * b
        out = []
        while len(out) < b:
            epoch, pos = divmod(start + len(out), n)
            perm = np.random.default_rng([self.o.seed, epoch]).permutation(n)
            out.extend(perm[pos:pos + b - len(out)].tolist())
        return np.asarray(out)

    # ----- the model's pieces --------------------------------------------------
    def _autocast(self):
        import torch
        from contextlib import nullcontext

        return torch.autocast("cuda", dtype=self.amp) if self.amp else nullcontext()

    def image_tokens(self, pixels):
        return self.model.vision_model(pixel_values=pixels.to(self.device)).last_hidden_state

    def image_vectors(self, tokens):
        import torch.nn.functional as F

        return F.normalize(self.model.vision_proj(tokens[:, 0, :]).float(), dim=-1)

    def text_vectors(self, ids, mask):
        import torch.nn.functional as F

        hidden = self.model.text_encoder(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
        return F.normalize(self.model.text_proj(hidden[:, 0, :]).float(), dim=-1)

    def itm_logits(self, ids, mask, tokens):
        return match_logits(self.model, ids.to(self.device), mask.to(self.device), tokens)

    def train_pixels(self, index, step: int, salt: int):
        """The pixels of training photos `index` as a step's loss reads them: shifted and scaled afresh
        (--augment shift, engine.training.augment), by a draw that is a function of (seed, step, salt) so a
        resumed run reads what the saved one would have."""
        import torch

        pixels = self.pixels[index]
        if self.o.augment == "none":
            return pixels
        from .augment import shift_and_scale

        gen = torch.Generator().manual_seed((self.o.seed * 1_000_003 + step) * 4 + salt + 7_919)
        return shift_and_scale(pixels, gen)

    # ----- one step of each objective ---------------------------------------
    def _batch_tensors(self, step: int):
        import torch

        caps = torch.as_tensor(self.batch(step))
        imgs = self.caption_image[caps]
        unique, inverse = torch.unique(imgs, return_inverse=True)
        return caps, imgs, unique, inverse

    def be_loss(self, step: int):
        from .losses import info_nce, triplet_max_violation

        caps, imgs, unique, inverse = self._batch_tensors(step)
        with self._autocast():
            image = self.image_vectors(self.image_tokens(self.train_pixels(unique, step, 0)))[inverse]
            text = self.text_vectors(self.ids[caps], self.mask[caps])
        ids = imgs.to(self.device)
        if self.o.be_loss == "infonce":
            return info_nce(text, image, ids, ids, self.log_temperature)
        return triplet_max_violation(text, image, ids, ids, self.o.margin)

    def ce_loss(self, step: int):
        """ITM loss on the batch's positives and their negatives. --itm-negatives itc (BLIP's): for each caption
        one photo, for each photo one caption, drawn from the softmax of the in-batch BE similarity with the
        same photo's items masked. random (the method's reference): one random in-batch swap a pair (caption
        swapped with probability 0.5), or with probability --hard-negatives one of the BE's 20 nearest
        non-matching items over the whole training set (mined at each evaluation, false negatives dropped).
        --text-negatives swap adds each caption with two of its parts exchanged, against its own photo."""
        import torch

        from .losses import itc_negatives, matching_loss, pick_negatives

        caps, imgs, unique, inverse = self._batch_tensors(step)
        gen = torch.Generator().manual_seed(self.o.seed * 1_000_003 + step)
        b = len(caps)
        texts, images, labels = [caps], [imgs], [torch.ones(b)]  # rows of self.ids (or of swaps, below)
        if self.o.itm_negatives == "itc":
            with torch.no_grad(), self._autocast():
                image_vec = self.image_vectors(self.image_tokens(self.pixels[unique]))[inverse]
                text_vec = self.text_vectors(self.ids[caps], self.mask[caps])
            t_rows, i_rows = itc_negatives(text_vec.cpu(), image_vec.cpu(), imgs, imgs,
                                           self.log_temperature.detach().cpu(), gen)
            keep_i, keep_t = i_rows >= 0, t_rows >= 0
            texts += [caps[keep_i], caps[t_rows[keep_t]]]
            images += [imgs[i_rows[keep_i]], imgs[keep_t]]
            labels += [torch.zeros(int(keep_i.sum()) + int(keep_t.sum()))]
        else:
            t_rows, i_rows = pick_negatives(imgs, imgs, gen)
            valid = (t_rows != torch.arange(b)) | (i_rows != torch.arange(b))
            neg_caps, neg_imgs = caps[t_rows].clone(), imgs[i_rows].clone()
            if self.hard_pool is not None:
                hard = torch.rand(b, generator=gen) < self.o.hard_negatives
                pick = torch.randint(self.hard_pool[0].shape[1], (b,), generator=gen)
                images_for, captions_for = self.hard_pool[0], self.hard_pool[1]
                for j in torch.nonzero(hard & valid).flatten().tolist():
                    if t_rows[j] != j:  # the caption is the swapped side
                        c = captions_for[imgs[j], pick[j] % captions_for.shape[1]]
                        if c >= 0:  # -1: a false negative, dropped at mining; the random one stays
                            neg_caps[j] = c
                    elif images_for[caps[j], pick[j]] >= 0:
                        neg_imgs[j] = images_for[caps[j], pick[j]]
            texts.append(neg_caps[valid])
            images.append(neg_imgs[valid])
            labels.append(torch.zeros(int(valid.sum())))
        ids, mask = self.ids[torch.cat(texts)], self.mask[torch.cat(texts)]
        for negatives in (self.swaps, self.replacements):  # one of each a caption (that has any)
            if negatives is not None:
                rows, has = negatives.draw(caps, gen)
                ids = torch.cat([ids, negatives.ids[rows]])
                mask = torch.cat([mask, negatives.mask[rows]])
                images.append(imgs[has])
                labels.append(torch.zeros(int(has.sum())))
        image_all = torch.cat(images)
        unique, inverse = torch.unique(image_all, return_inverse=True)
        with self._autocast():
            tokens = self.image_tokens(self.train_pixels(unique, step, 1))
            logits = self.itm_logits(ids, mask, tokens[inverse.to(self.device)])
        labels = torch.cat(labels)
        if self.mirrors is not None:
            flip_logits, flip_labels = self._flip_pairs(caps, imgs, step)
            logits, labels = torch.cat([logits, flip_logits]), torch.cat([labels, flip_labels])
        return matching_loss(logits, labels.to(self.device))

    def _flip_pairs(self, caps, imgs, step: int):
        """--image-negatives flip: ITM logits and labels of each batch caption that names a relation against its
        photo flipped along the relation's axis (0) and of its mirrored caption against that flipped photo (1)."""
        import torch

        axis = self.mirrors.axis[caps]
        rows = torch.nonzero(axis > 0).flatten()
        if len(rows) == 0:
            return torch.zeros(0, 2, device=self.device), torch.zeros(0)
        pixels = self.train_pixels(imgs[rows], step, 2)
        horizontal = (axis[rows] == 1)[:, None, None, None]
        pixels = torch.where(horizontal, pixels.flip(3), pixels.flip(2))  # NCHW: 3 is width, 2 is height
        c = caps[rows]
        ids = torch.cat([self.ids[c], self.mirrors.ids[c]])
        mask = torch.cat([self.mask[c], self.mirrors.mask[c]])
        with self._autocast():
            tokens = self.image_tokens(pixels)
            logits = self.itm_logits(ids, mask, torch.cat([tokens, tokens]))
        return logits, torch.cat([torch.zeros(len(rows)), torch.ones(len(rows))])

    def mine(self) -> None:
        """Refresh the hard-negative pool from the current BE over the whole training set."""
        import torch

        from .losses import false_negatives, mine_hard_negatives

        self.model.eval()
        with torch.no_grad(), self._autocast():
            img = torch.cat([self.image_vectors(self.image_tokens(self.pixels[a:a + 128]))
                             for a in range(0, len(self.pixels), 128)])
            txt = torch.cat([self.text_vectors(self.ids[a:a + 512], self.mask[a:a + 512])
                             for a in range(0, len(self.ids), 512)])
        images_for, captions_for = mine_hard_negatives(txt.cpu(), img.cpu(), self.caption_image)
        false_images, false_captions = false_negatives(images_for, captions_for, self.data.captions,
                                                       self.data.caption_image)
        self.false_negatives = {"mined": int(images_for.numel() + captions_for.numel()),
                                "false": int(false_images.sum() + false_captions.sum())}
        self.hard_pool = (images_for.masked_fill(false_images, -1), captions_for.masked_fill(false_captions, -1))

    def _optimise(self, loss) -> float:
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.o.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def train_step(self, step: int) -> dict[str, float]:
        """The step's objectives, each with its own forward, backward and optimiser step (Joint alternates)."""
        import torch

        torch.manual_seed(self.o.seed * 7_919 + step)  # dropout, if the model has any, is a function of the step
        self.model.train()
        losses = {}
        if self.o.mode in ("be", "joint"):
            losses["be"] = self._optimise(self.be_loss(step))
        if self.o.mode in ("ce", "joint"):
            losses["ce"] = self._optimise(self.ce_loss(step))
        self.schedule.step()
        return losses

    # ----- the dev figure --------------------------------------------------------
    def dev_figures(self) -> dict[str, float]:
        """Recall on the dev photos: of the BE (modes be, joint) and of the CE over every pair (ce, joint), with
        the CE's twin pair accuracy where the dev split has twins; `mean` (the mean of each scorer's mean
        recall, a CE's averaged with its pair accuracy) is what the best checkpoint is chosen by."""
        import torch

        from .recall import mean_recall, recalls
        from .twins import pair_accuracy

        self.model.eval()
        out: dict[str, float] = {}
        with torch.no_grad(), self._autocast():
            tokens = torch.cat([self.image_tokens(self.dev_pixels[a:a + 64]) for a in range(0, len(self.dev_pixels), 64)])
            figures = []
            if self.o.mode in ("be", "joint"):
                img = self.image_vectors(tokens)
                txt = torch.cat([self.text_vectors(self.dev_ids[a:a + 256], self.dev_mask[a:a + 256])
                                 for a in range(0, len(self.dev_ids), 256)])
                r = recalls((txt @ img.T).cpu().numpy(), self.dev.caption_image)
                out.update({f"be_{k}": v for k, v in r.items()})
                figures.append(mean_recall(r))
            if self.o.mode in ("ce", "joint"):
                scores = self._ce_matrix(tokens)
                r = recalls(scores, self.dev.caption_image)
                out.update({f"ce_{k}": v for k, v in r.items()})
                by_kind = pair_accuracy(scores, self.dev_twins)
                pairs = by_kind.pop("all", None)
                if pairs is None:
                    figures.append(mean_recall(r))
                else:  # half recall, half twin pair accuracy
                    out["ce_pairs"] = pairs
                    # each kind apart too ("ce_pairs_relation swap"): which of them the CE has learned
                    out.update({f"ce_pairs_{kind}": v for kind, v in sorted(by_kind.items())})
                    figures.append((mean_recall(r) + pairs) / 2)
        out["mean"] = float(np.mean(figures))
        return out

    def _ce_matrix(self, tokens) -> np.ndarray:
        import torch

        n_t, n_i = len(self.dev_ids), len(tokens)
        scores = np.zeros((n_t, n_i), np.float32)
        pairs = [(t, i) for t in range(n_t) for i in range(n_i)]
        for a in range(0, len(pairs), 512):
            chunk = pairs[a:a + 512]
            t = torch.as_tensor([p[0] for p in chunk])
            i = torch.as_tensor([p[1] for p in chunk])
            logits = self.itm_logits(self.dev_ids[t], self.dev_mask[t], tokens[i.to(tokens.device)])
            scores[t.numpy(), i.numpy()] = (logits[:, 1] - logits[:, 0]).cpu().numpy()
        return scores

    # ----- the run ----------------------------------------------------------------
    def save_checkpoint(self) -> None:
        from .fresh import save_checkpoint

        save_checkpoint(self.model, self.processor, self.out)

    def run(self) -> Iterator[TrainProgress]:
        """The run's progress events. torch's deterministic algorithms are on for its length: the backward of
        indexing a batch's image tokens by a repeated index (several captions of one photo, several negatives
        of one photo) accumulates in an order that varies between runs on the CPU otherwise, so one seed gave
        other weights each time."""
        import torch

        before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        torch.use_deterministic_algorithms(True, warn_only=True)  # warn_only: an op without such a kernel still runs
        try:
            yield from self._run()
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])

    def _run(self) -> Iterator[TrainProgress]:
        yield from self._prepare()
        o = self.o
        every = o.checkpoint_every or o.eval_every
        if self.step == 0 and self.dev is None:
            yield TrainProgress("training", 0, o.steps, message="no dev split: the last checkpoint is kept")
        elif self.step:
            yield TrainProgress("training", self.step, o.steps, best=self.best,
                                message=f"resumed at step {self.step:,} of {o.steps:,}")
        losses: dict[str, float] = {}
        started = time.perf_counter()
        while self.step < o.steps:
            if self.cancel.cancelled:
                self._save_state()
                self._write_log(started)
                yield TrainProgress("cancelled", self.step, o.steps, losses, best=self.best,
                                    message=f"stopped at step {self.step:,}; --resume continues from there")
                return
            t0 = time.perf_counter()
            if self.o.mode != "be" and self.o.hard_negatives > 0 and self.step % o.eval_every == 0:
                self.mine()  # a pure function of the weights at this step: a resumed run mines the same pool
            losses = self.train_step(self.step)
            self.step += 1
            if not all(math.isfinite(v) for v in losses.values()):
                raise TrainingError(f"The loss became {losses} at step {self.step}; lower --lr and start again.")
            self.history.append({"step": self.step, **{f"loss_{k}": round(v, 5) for k, v in losses.items()}})
            yield TrainProgress("training", self.step, o.steps, losses, best=self.best)
            last = self.step == o.steps
            if self.dev is not None and (self.step % o.eval_every == 0 or last):
                yield TrainProgress("evaluating", self.step, o.steps, losses, best=self.best)
                dev = self.dev_figures()
                self.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.history[-1]["dev"] = {k: round(v, 4) for k, v in dev.items()}
                if self.best is None or dev["mean"] > self.best:
                    self.best = dev["mean"]
                    self.save_checkpoint()
                    self._write_log(started)
                    yield TrainProgress("saved", self.step, o.steps, losses, dev, self.best,
                                        message=f"best dev figure {dev['mean']:.3f} at step {self.step:,}")
                else:
                    yield TrainProgress("evaluating", self.step, o.steps, losses, dev, self.best)
            elif self.dev is None and (self.step % every == 0 or last):
                self.save_checkpoint()
            self.seconds += time.perf_counter() - t0
            if self.step % every == 0 or last:
                self._save_state()
        self._write_log(started)
        yield TrainProgress("done", self.step, o.steps, losses, best=self.best,
                            message=f"checkpoint in {self.out}")

    def _write_log(self, started: float) -> None:
        import torch

        log = {"options": {k: v for k, v in asdict(self.o).items()}, "step": self.step, "best_dev_mean": self.best,
               "seconds": round(self.seconds, 1),
               "parameters": sum(p.numel() for p in self.model.parameters()),
               # what the same seed's figures still depend on across machines (rounding of the CPU's kernels)
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "trained_parameters": sum(p.numel() for g in self.optimizer.param_groups for p in g["params"]),
               "train_images": len(self.data.images), "train_captions": len(self.data.captions),
               "dev_images": len(self.dev.images) if self.dev is not None else 0,
               "text_negatives": _count_kinds([n for n in (self.swaps, self.replacements) if n is not None],
                                              len(self.data.captions)),
               "false_negatives": self.false_negatives, "history": self.history}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "training.json").write_text(json.dumps(log, indent=1))


def _count_kinds(negatives: list[SwapNegatives], captions: int) -> dict[str, int] | None:
    """How many training captions have a text negative of each kind, and how many have none (None: no text
    negatives were asked for)."""
    from collections import Counter

    if not negatives:
        return None
    counts: Counter[str] = Counter()
    has_any = [False] * captions
    for neg in negatives:
        for c, (a, n) in enumerate(zip(neg.start.tolist(), neg.count.tolist())):
            counts.update(set(neg.kinds[a:a + n]))
            has_any[c] = has_any[c] or n > 0
    return {"captions": captions, **dict(sorted(counts.items())), "none": captions - sum(has_any)}


def match_logits(model, ids, mask, tokens):
    """A BLIP retrieval model's ITM logits (B, 2) for (caption, image tokens) pairs, the reference forward
    (differentiable; engine.models.blip_ce computes the same at query time in a cheaper order)."""
    import torch

    atts = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
    hidden = model.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=tokens,
                                encoder_attention_mask=atts).last_hidden_state
    return model.itm_head(hidden[:, 0, :]).float()


def make_trainer(options: TrainOptions, cancel: CancelToken | None = None) -> Trainer:
    """The trainer of a run's mode: `Trainer` for be/ce/joint, `LateTrainer` for li, `ShrinkCeTrainer` for
    shrink-ce."""
    if options.mode == "shrink-ce":
        from .shrink_ce import ShrinkCeTrainer

        return ShrinkCeTrainer(options, cancel)
    if options.mode == "li":
        from .late import LateTrainer

        return LateTrainer(options, cancel)
    return Trainer(options, cancel)
