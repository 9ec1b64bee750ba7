"""The terminal commands of the training half: `train`, `eval` and `bench-data` (parsers and handlers).

engine/cli.py adds these to its parser and dispatches to them; everything here only turns options into
engine calls and engine events into progress bars and output.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

# The recipe's Sep CE stage on the shapes set (docs/QUALITY.md says why): a CE learns to read colours within a
# few hundred steps, but the relation ("left of" against "right of") only after a long plateau. Its caption
# negatives are every kind of swap: with relation swaps alone, a CE fine-tuned from the pre-trained model
# learned neither colours nor the relation in 3000 steps (twin pair accuracy 50.2 / 49.4 on the test split),
# with all kinds the same run reached 92.9 / 94.4 on the dev split.
CE_STEPS = 3000
JOINT_STEPS = 3000
FLICKR_STEPS = 500
# Joint: replacements beside swaps. With the 2,090 distractors Joint+Coop k=20 rose from 3.5 points below its BE
# to 5.8 above it in the recipe (docs/QUALITY.md, "Run to run"). The Sep CE keeps swaps alone: with replacements
# it did not learn the relation in 3,000 steps.
RECIPE_TEXT_NEGATIVES = "swap,replace"
RECIPE_CE_TEXT_NEGATIVES = "swap"
RECIPE_IMAGE_NEGATIVES = "flip"
RECIPE_AUGMENT = "none"


def _probability(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, not {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, not {text!r}")
    return v


def _modes(text: str) -> list[str]:
    from .evaluate import MODES

    parts = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in parts if m not in MODES]
    if not parts or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(MODES)}, not {text!r}")
    return parts


def add_parsers(sub, common, positive_int, non_negative_int, parse_sizes) -> None:
    p = sub.add_parser("train", parents=[common], help="fine-tune a BE, a CE or both (joint) on image-caption data")
    p.add_argument("data", help="captions CSV/TSV, COCO or Karpathy JSON, or a folder with captions.csv and images/")
    p.add_argument("--mode", choices=["be", "ce", "joint", "li", "shrink-ce"], default="joint",
                   help="be: the twin network; ce: the matching head; joint: both on shared weights (default); "
                        "li: a late-interaction head (inflate; with --shrink-from, distil); shrink-ce: a CE "
                        "reading the patch grid pooled (--pool), distilled from the full CE")
    p.add_argument("--out", required=True, metavar="FOLDER", help="where the checkpoint goes (a normal model folder)")
    p.add_argument("--init", choices=["tiny", "small"],
                   help="start from a fresh model of this size, its vocabulary from the data (instead of --model)")
    p.add_argument("--image-size", type=positive_int, help="photo size of a fresh model (default 64)")
    p.add_argument("--split", help="the split to train on (default: train, when the data has one; else all)")
    p.add_argument("--dev-split", default="dev", help="the split the best checkpoint is chosen on (default dev)")
    p.add_argument("--steps", type=positive_int, default=1000, help="optimiser steps (default 1000)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="captions per step (default 32)")
    p.add_argument("--lr", type=_positive_float,
                   help="learning rate (default 5e-4 from scratch; 2e-5 be, 5e-5 ce and joint when fine-tuning)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--be-loss", choices=["triplet", "infonce"], default="triplet",
                   help="triplet: batch-hard, both directions (default); infonce: contrastive, learnable temperature")
    p.add_argument("--margin", type=float, default=0.1, help="triplet margin (default 0.1)")
    p.add_argument("--hard-negatives", type=_probability, default=0.0, metavar="P",
                   help="with --itm-negatives random: draw the CE's negative from the BE's nearest non-matching "
                        "item of the training set with probability P (mined negatives that match are dropped)")
    p.add_argument("--itm-negatives", choices=["itc", "random"], default="itc",
                   help="the CE's negatives: itc draws a photo for each caption and a caption for each photo from "
                        "the in-batch BE similarity (BLIP's; default); random draws one at random")
    p.add_argument("--text-negatives", default="swap", metavar="swap|replace|none|KINDS",
                   help="swap (default): the CE also learns to reject each caption with two of its colours, sizes, "
                        "objects or its relation exchanged, against the caption's own photo; replace: with one "
                        "colour, size or object word changed to another the data uses; swap,replace: both; a "
                        "comma list of colour, size, object, relation, colour-replace, size-replace, "
                        "object-replace asks for only those; none: no such negatives")
    p.add_argument("--image-negatives", choices=["none", "flip"], default="none",
                   help="flip: a caption that names a left/right (above/below) relation also meets its photo "
                        "flipped along that axis as a negative, and the flipped photo meets the caption with "
                        "those words swapped as a positive, so only the objects' places tell them apart "
                        "(CE and Joint; default none)")
    p.add_argument("--augment", choices=["none", "shift"], default="none",
                   help="shift: each time a step reads a training photo it is shifted and scaled by a few percent, "
                        "so the model cannot learn the training photos' pixels by heart (default none)")
    p.add_argument("--eval-every", type=positive_int, default=100, help="dev evaluation every N steps (default 100)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    li = p.add_argument_group("late interaction (--mode li)")
    li.add_argument("--shrink-from", metavar="TEACHER",
                    help="distil from a teacher: a checkpoint with an LI head, or any BLIP checkpoint (its CE); "
                         "the student starts from the teacher's weights unless --model is given (shrink-ce: "
                         "the full CE to learn from, default --model's own)")
    li.add_argument("--keep", type=positive_int, metavar="M", help="image tokens the head keeps a photo (default all)")
    li.add_argument("--keep-text", type=positive_int, metavar="M", help="text tokens the head keeps (default all)")
    li.add_argument("--codes", type=non_negative_int, default=32,
                    help="learnable codes appended to each encoder's input when inflating (default 32)")
    li.add_argument("--li-width", type=positive_int, default=128, help="the LI tokens' width (default 128)")
    li.add_argument("--train-encoders", action="store_true",
                    help="train the encoders too (changes the checkpoint's BE and CE; default: frozen, head only)")
    li.add_argument("--teacher-scale", type=_positive_float,
                    help="the teacher's score multiplier in the distillation softmax (default 16 for an LI "
                         "teacher, 1 for a CE's logits)")
    li.add_argument("--student-scale", type=_positive_float, default=16.0,
                    help="the student's score multiplier (default 16)")
    sc = p.add_argument_group("shrunk CE (--mode shrink-ce)")
    sc.add_argument("--pool", type=positive_int, default=2, metavar="F",
                    help="average-pool the patch grid F x F (default 2: 577 -> 145 tokens for BLIP base)")

    p = sub.add_parser("eval", parents=[common], help="recall at 1/5/10 of the BE, the CE and Coop, with query latency")
    p.add_argument("data", help="captions CSV/TSV, COCO or Karpathy JSON, or a folder with captions.csv and images/")
    p.add_argument("--split", help="the split to evaluate (default: test, when the data has one; else all)")
    p.add_argument("--modes", type=_modes, default=None,
                   help="rows: be,ce,coop,li,be-li,be-li-ce (default: be,ce,coop, and the LI rows when the model "
                        "has an LI head)")
    p.add_argument("--li-n", type=positive_int, default=200, metavar="N",
                   help="BE candidates the LI stage orders in the be-li rows (default 200)")
    p.add_argument("--ks", type=parse_sizes, default=[5, 10, 20, 50], help="Coop depths (default 5,10,20,50)")
    p.add_argument("--distractors", metavar="FOLDER_OR_DATA", help="more photos to search (no more queries)")
    p.add_argument("--ce-max-pairs", type=positive_int, default=500_000,
                   help="refuse the CE-alone row above this many caption-photo pairs (default 500000)")
    p.add_argument("--out", metavar="FOLDER", help="write eval.json, eval.md and the plots there")
    p.add_argument("--max-images", type=positive_int, help="evaluate on the first N photos of the split")

    p = sub.add_parser("bench-data", parents=[common], help="generate a benchmark dataset (shapes)")
    p.add_argument("kind", choices=["shapes"])
    p.add_argument("out", metavar="OUT")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--train", type=positive_int, default=2000, help="training images (default 2000)")
    p.add_argument("--dev-groups", type=positive_int, default=30, help="dev scenes, each with two twins (default 30)")
    p.add_argument("--test-groups", type=positive_int, default=60, help="test scenes, each with two twins (default 60)")
    p.add_argument("--image-size", type=positive_int, default=64)

    p = sub.add_parser("recipe", parents=[common],
                       help="the whole method here: shapes set, train BE, CE and Joint, evaluate, write the report "
                            '(--json prints {"joint", "sep", "distractors"}, each the `picsift eval --json` object)')
    p.add_argument("work", metavar="WORK", help="working folder (data, checkpoints, results); run again to go on")
    p.add_argument("--flickr", metavar="DATA", help="also run real photos: a captions folder such as flickr8k-dev")
    p.add_argument("--doc", metavar="MD", help="write the report there (e.g. docs/QUALITY.md) with its plots")
    p.add_argument("--seed", type=non_negative_int, default=0, help="training seed (default 0)")
    p.add_argument("--shapes-seed", type=non_negative_int, default=None, metavar="S",
                   help="draw the shapes set with seed S (default: --seed); each seed gets its own data folder")
    p.add_argument("--steps", type=positive_int, default=1500,
                   help="steps of the pre-trained model, Joint from scratch (default 1500)")
    p.add_argument("--ce-steps", type=positive_int, default=CE_STEPS, metavar="N",
                   help=f"steps of the Sep CE, from the pre-trained model (default {CE_STEPS})")
    p.add_argument("--joint-steps", type=positive_int, default=JOINT_STEPS, metavar="N",
                   help=f"steps of Joint, from the pre-trained model (default {JOINT_STEPS})")
    p.add_argument("--flickr-steps", type=positive_int, default=FLICKR_STEPS,
                   help=f"real photos: steps of the pre-trained model, the Sep CE and Joint; the Sep BE takes half "
                        f"(default {FLICKR_STEPS})")
    p.add_argument("--text-negatives", default=RECIPE_TEXT_NEGATIVES, metavar="swap|replace|none|KINDS",
                   help=f"Joint's caption negatives on the shapes set, as for train "
                        f"(default {RECIPE_TEXT_NEGATIVES}); real photos use swap")
    p.add_argument("--ce-text-negatives", default=RECIPE_CE_TEXT_NEGATIVES, metavar="swap|replace|none|KINDS",
                   help=f"the Sep CE's caption negatives on the shapes set, as for train "
                        f"(default {RECIPE_CE_TEXT_NEGATIVES}); real photos use swap")
    p.add_argument("--image-negatives", choices=["none", "flip"], default=RECIPE_IMAGE_NEGATIVES,
                   help=f"the Sep CE's and Joint's mirrored-photo negatives, as for train (default "
                        f"{RECIPE_IMAGE_NEGATIVES}), on both the shapes set and real photos")
    p.add_argument("--augment", choices=["none", "shift"], default=RECIPE_AUGMENT,
                   help=f"the Sep CE's and Joint's photo augmentation, as for train (default {RECIPE_AUGMENT})")


@contextmanager
def _first_ctrl_c_cancels(cancel):
    """The first Ctrl+C asks the run to stop at the next step (its state is saved); a second one interrupts."""
    def handler(signum, frame):
        if cancel.cancelled:
            raise KeyboardInterrupt
        cancel.cancel()
        print("\npicsift: stopping after this step (Ctrl+C again to interrupt at once)", file=sys.stderr)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def cmd_train(s) -> int:
    from tqdm import tqdm

    from ..jobs import CancelToken
    from .train import TrainOptions, make_trainer

    a = s.args
    options = TrainOptions(data=a.data, out=a.out, mode=a.mode, model=a.model, init=a.init, image_size=a.image_size,
                           split=a.split, dev_split=a.dev_split, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                           weight_decay=a.weight_decay, be_loss=a.be_loss, margin=a.margin,
                           hard_negatives=a.hard_negatives, itm_negatives=a.itm_negatives,
                           text_negatives=a.text_negatives, image_negatives=a.image_negatives,
                           augment=a.augment, eval_every=a.eval_every, seed=a.seed,
                           device=a.device, resume=a.resume, shrink_from=a.shrink_from, keep=a.keep,
                           keep_text=a.keep_text, codes=a.codes, li_width=a.li_width,
                           train_encoders=a.train_encoders, teacher_scale=a.teacher_scale,
                           student_scale=a.student_scale, pool=a.pool)
    cancel = CancelToken()
    bar = None
    last = None
    with _first_ctrl_c_cancels(cancel):
        for ev in make_trainer(options, cancel).run():
            last = ev
            if ev.phase == "preparing":
                if not a.quiet and ev.message:
                    print(f"picsift train: {ev.message}", file=sys.stderr)
                continue
            if bar is None and not a.quiet:
                bar = tqdm(total=ev.steps, initial=ev.step, unit="step", desc=f"Training {a.mode}", file=sys.stderr,
                           dynamic_ncols=True)
            if bar is not None:
                bar.update(ev.step - bar.n)
                post = {f"loss_{k}": f"{v:.4f}" for k, v in ev.losses.items()}
                if ev.best is not None:
                    post["best_dev"] = f"{ev.best:.3f}"
                bar.set_postfix(post, refresh=False)
                if ev.message:
                    bar.write(f"picsift train: {ev.message}", file=sys.stderr)
    if bar is not None:
        bar.close()
    summary = {"out": str(Path(a.out).expanduser().resolve()), "step": last.step, "steps": last.steps,
               "best_dev_mean_recall": last.best, "stopped": last.phase == "cancelled"}
    if a.json:
        print(json.dumps(summary))
    elif last.phase == "cancelled":
        print(f"Stopped at step {last.step:,} of {last.steps:,}; run the same command with --resume to go on.")
    else:
        best = f"; best dev figure {last.best:.3f}" if last.best is not None else ""
        print(f"Trained {a.mode} for {last.step:,} steps{best}. Checkpoint: {summary['out']} "
              f"(use it with --model {summary['out']}).")
    return 130 if last.phase == "cancelled" else 0


def cmd_eval(s) -> int:
    from tqdm import tqdm

    from ..models import DEFAULT_MODEL
    from .evaluate import Evaluation, EvalOptions, markdown_table, pair_table, shrunk, write_reports

    a = s.args
    options = EvalOptions(data=a.data, model=a.model or DEFAULT_MODEL, ce_model=a.ce_model, split=a.split,
                          modes=a.modes, ks=a.ks, li_n=a.li_n, distractors=a.distractors, ce_max_pairs=a.ce_max_pairs,
                          device=a.device, precision=a.precision, max_images=a.max_images)
    ev = Evaluation(options)
    bar, phase = None, None
    for p in ev.run():
        if p.message and p.phase != "done" and not a.quiet:
            print(f"picsift eval: {p.message}", file=sys.stderr)
        if p.total and p.phase != phase and not a.quiet:
            if bar is not None:
                bar.close()
            phase = p.phase
            bar = tqdm(total=p.total, desc=f"Evaluating: {phase}", file=sys.stderr, dynamic_ncols=True)
        if bar is not None and p.total:
            bar.update(p.done - bar.n)
    if bar is not None:
        bar.close()
    result = ev.result
    if a.out:
        written = write_reports(ev, result, a.out)
        if not a.quiet:
            print("picsift eval: wrote " + ", ".join(str(w) for w in written), file=sys.stderr)
    if a.json:
        print(json.dumps(result))
    else:
        print(f"{result['images']:,} photos ({result['distractors']:,} distractors), {result['queries']:,} caption "
              f"queries; split {result['split'] or 'all'}; {result['precision']}")
        if shrunk(result):
            print(f"The CE is a shrunk CE: {result['ce']['layout']}.")
        print(markdown_table(result))
        if result.get("pair_accuracy"):
            print("\nPair accuracy on twins (%: the caption's own photo scored above its twin; a bag of words is "
                  "at 50):\n" + pair_table(result))
    return 0


def cmd_bench_data(s) -> int:
    from tqdm import tqdm

    from .shapes import generate_shapes

    a = s.args
    bar = None if a.quiet else tqdm(total=0, unit="image", desc="Drawing shapes", file=sys.stderr)

    def progress(done, total):
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    try:
        summary = generate_shapes(a.out, seed=a.seed, train=a.train, dev_groups=a.dev_groups,
                                  test_groups=a.test_groups, image_size=a.image_size, progress=progress)
    except ValueError as exc:
        from ..errors import PicsiftError

        raise PicsiftError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    if a.json:
        print(json.dumps({"folder": str(summary.folder), "seed": summary.seed, "images": summary.counts,
                          "captions": summary.captions, "twins": summary.twins}))
    else:
        counts = ", ".join(f"{v:,} {k}" for k, v in summary.counts.items())
        print(f"Wrote the shapes set to {summary.folder}: {counts} images, {summary.captions:,} captions, "
              f"{summary.twins:,} twin pairs (seed {summary.seed}).")
    return 0


def cmd_recipe(s) -> int:
    import shlex

    from tqdm import tqdm

    from ..machine import describe_cpu, matmul_gflops
    from .recipe import RecipeOptions, run_recipe, write_quality

    a = s.args
    work = Path(a.work).expanduser().resolve()
    shapes_seed = a.seed if a.shapes_seed is None else a.shapes_seed
    runs = [RecipeOptions(work=str(work / ("shapes" if shapes_seed == 0 else f"shapes-{shapes_seed}")), kind="shapes",
                          seed=a.seed, data_seed=shapes_seed, steps=a.steps, ce_steps=a.ce_steps,
                          joint_steps=a.joint_steps, text_negatives=a.text_negatives,
                          ce_text_negatives=a.ce_text_negatives, image_negatives=a.image_negatives, augment=a.augment, device=a.device)]
    if a.flickr:
        runs.append(RecipeOptions(work=str(work / "flickr"), kind="flickr", data=a.flickr, seed=a.seed,
                                  steps=a.flickr_steps, be_steps=max(1, a.flickr_steps // 2),
                                  ce_steps=a.flickr_steps, joint_steps=a.flickr_steps, text_negatives="swap",
                                  ce_text_negatives="swap",
                                  image_negatives=a.image_negatives, augment=a.augment, device=a.device))
    reports, dirs = {}, {}
    for o in runs:
        bar, stage = None, None
        for ev in run_recipe(o):
            if ev.stage != stage:
                if bar is not None:
                    bar.close()
                    bar = None
                stage = ev.stage
                if not a.quiet:
                    print(f"picsift recipe ({o.kind}): {stage}", file=sys.stderr)
            if ev.steps and bar is None and not a.quiet:
                bar = tqdm(total=ev.steps, desc=f"{o.kind}: {stage}", file=sys.stderr, dynamic_ncols=True)
            if bar is not None and ev.steps:
                bar.total = ev.steps
                bar.update(ev.step - bar.n)
                if ev.losses:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in ev.losses.items()}, refresh=False)
        if bar is not None:
            bar.close()
        reports[o.kind] = json.loads((Path(o.work) / "recipe.json").read_text())
        dirs[o.kind] = Path(o.work)
    if a.doc:
        machine = (f"{describe_cpu()}; matmul {matmul_gflops():.0f} GFLOP/s fp32 on the threads torch uses")
        commands = ["picsift recipe " + " ".join(shlex.quote(x) for x in _argv_for_doc(a))]
        doc = write_quality(reports, dirs, Path(a.doc), commands, machine)
        print(f"Wrote {doc}.", file=sys.stderr if a.json else sys.stdout)  # --json: stdout is the JSON alone
    for kind, rep in reports.items():
        print(f"{kind}: {rep['timings_s']['total'] / 60:.1f} min; results in {dirs[kind] / 'recipe.json'}",
              file=sys.stderr if a.json else sys.stdout)
    if a.json:
        shapes = reports["shapes"]
        out = {k: shapes[k] for k in ("joint", "sep", "distractors")}
        if "flickr" in reports:
            out["flickr"] = {k: reports["flickr"][k] for k in ("joint", "sep")}
        print(json.dumps(out, indent=1))
    return 0


def _argv_for_doc(a) -> list[str]:
    out = [a.work]
    if a.flickr:
        out += ["--flickr", a.flickr]
    if a.doc:
        out += ["--doc", a.doc]
    if a.seed:
        out += ["--seed", str(a.seed)]
    if a.shapes_seed is not None and a.shapes_seed != a.seed:
        out += ["--shapes-seed", str(a.shapes_seed)]
    if a.steps != 1500:
        out += ["--steps", str(a.steps)]
    if a.ce_steps != CE_STEPS:
        out += ["--ce-steps", str(a.ce_steps)]
    if a.joint_steps != JOINT_STEPS:
        out += ["--joint-steps", str(a.joint_steps)]
    if a.flickr_steps != FLICKR_STEPS:
        out += ["--flickr-steps", str(a.flickr_steps)]
    if a.text_negatives != RECIPE_TEXT_NEGATIVES:
        out += ["--text-negatives", a.text_negatives]
    if a.ce_text_negatives != RECIPE_CE_TEXT_NEGATIVES:
        out += ["--ce-text-negatives", a.ce_text_negatives]
    if a.image_negatives != RECIPE_IMAGE_NEGATIVES:
        out += ["--image-negatives", a.image_negatives]
    if a.augment != RECIPE_AUGMENT:
        out += ["--augment", a.augment]
    return out


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "bench-data": cmd_bench_data, "recipe": cmd_recipe}
