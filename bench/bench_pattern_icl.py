"""Benchmark: the pattern-matching experiment of ``src/pattern_icl.py``, as shipped before versus now.

Runs a subset of the README's bundled-model example (``--heads L1H3,L1H0 --method
mean,zero,knockout``, 5 random draws; here ``--tasks`` with one demonstration seed) three
ways in this process, on the same tokenized prompts and thread count:

* ``per prompt``: the scoring loop as shipped (a frozen copy below), one sequence per forward
  pass, every condition as before: 5 seeded random draws even when they repeat one set,
  mean-ablation references of every layer;
* ``as shipped``: the same with the shipped batch size (16);
* ``now``: :func:`icl_cmr.interventions.pattern_eval.plan_scoring` once per task and reused by every
  condition, distinct random draws only (:func:`icl_cmr.interventions.head_ablation.draw_random_head_sets`),
  references of the ablated layers only.

Every condition both ways run is checked to agree (accuracy counts equal, log-likelihoods
within 1e-5). The ratio is comparable across machines; absolute times depend on the
machine and its load.

Usage::

    python bench/bench_pattern_icl.py [--model saved_models/toy_lm] [--tasks repetition,category_pairs_4way_a]
        [--n-items 50] [--threads 1 2] [--skip-per-prompt]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from icl_cmr.interventions.knockout import batch_knockout_mask, kind_codes, knockout_hooks  # noqa: E402
from icl_cmr.cli.args import OneLineErrorParser, positive_int  # noqa: E402
from icl_cmr.interventions.head_ablation import ablation_hooks, draw_random_head_sets, parse_heads, random_heads
from icl_cmr.heads.models import choose_bos, load_model
from icl_cmr.heads.registry import resolve_model
from icl_cmr.interventions.pattern_eval import (EncodedPrompt, encode_prompts, label_log_likelihoods, plan_scoring,
                                                reference_means, score_choices)
from icl_cmr.interventions.pattern_tasks import PatternTaskConfig, generate_prompts  # noqa: E402

HEADS = "L1H3,L1H0"
METHODS = ("mean", "zero", "knockout")
N_RANDOM_SETS = 5
SHIPPED_BATCH_SIZE = 16


# ----------------------------------------------------------------------------- the shipped scoring loop (frozen)

def shipped_label_log_likelihoods(model, encoded: Sequence[EncodedPrompt], batch_size: int = 16, hooks=None,
                                  knockout_heads=None) -> np.ndarray:
    """``pattern_eval.label_log_likelihoods`` as shipped: one run per prompt and label unless all labels
    are one token, batches and knockout masks rebuilt on every call."""
    import torch

    runs = []
    for index, item in enumerate(encoded):
        last = len(item.prompt_ids) - 1
        if all(len(c) == 1 for c in item.continuation_ids):
            targets = np.array([c[0] for c in item.continuation_ids], dtype=np.int64)
            runs.append((index, item.prompt_ids, item.prompt_kinds, np.full(len(targets), last), targets,
                         np.arange(len(targets))))
            continue
        for label, (cont, cont_kinds) in enumerate(zip(item.continuation_ids, item.continuation_kinds)):
            runs.append((index, np.concatenate([item.prompt_ids, cont]), item.prompt_kinds + cont_kinds,
                         last + np.arange(len(cont)), cont, np.full(len(cont), label)))
    order = sorted(range(len(runs)), key=lambda r: -len(runs[r][1]))
    result = np.zeros((len(encoded), len(encoded[0].continuation_ids)), dtype=np.float64)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chosen = [runs[r] for r in order[start:start + batch_size]]
            length = max(len(run[1]) for run in chosen)
            tokens = np.zeros((len(chosen), length), dtype=np.int64)
            for row, run in enumerate(chosen):
                tokens[row, :len(run[1])] = run[1]
            batch_hooks = list(hooks or [])
            if knockout_heads:
                blocked = batch_knockout_mask([kind_codes(run[2]) for run in chosen], length)
                batch_hooks += knockout_hooks(model, knockout_heads, blocked)
            logits = model.run_with_hooks(torch.as_tensor(tokens, device=device), fwd_hooks=batch_hooks)
            rows = np.concatenate([np.full(len(run[3]), row) for row, run in enumerate(chosen)])
            positions = np.concatenate([run[3] for run in chosen])
            targets = torch.as_tensor(np.concatenate([run[4] for run in chosen]), device=logits.device)
            selected = logits[torch.as_tensor(rows, device=logits.device),
                              torch.as_tensor(positions, device=logits.device)].float()
            log_probs = torch.log_softmax(selected, dim=-1).gather(1, targets[:, None])[:, 0].double().cpu().numpy()
            np.add.at(result, (np.concatenate([np.full(len(run[3]), run[0]) for run in chosen]),
                               np.concatenate([run[5] for run in chosen])), log_probs)
    return result


# ----------------------------------------------------------------------------- one experiment, either way

def conditions(heads, random_sets) -> List[tuple]:
    """(name, method, heads) for intact, then each method on the heads and on every random set."""
    out = [("intact", "none", [])]
    for method in METHODS:
        out.append((f"{method}/induction", method, heads))
        out.extend((f"{method}/random#{draw}", method, drawn) for draw, drawn in enumerate(random_sets))
    return out


def experiment(model, encoded, references, heads, mode: str, batch_size: int):
    """Score every task under every condition; returns ({(task, condition): log-likelihoods}, sequences)."""
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    if mode == "now":
        drawn = draw_random_head_sets(n_layers, n_heads, len(heads), N_RANDOM_SETS, 0, exclude=heads,
                                      layer_matched_to=heads)
        random_sets, layers = [list(s) for s in drawn.sets], sorted({layer for layer, _ in heads})
    else:
        random_sets = [random_heads(n_layers, n_heads, len(heads), draw, exclude=heads, layer_matched_to=heads)
                       for draw in range(N_RANDOM_SETS)]
        layers = list(range(n_layers))
    results, sequences = {}, 0
    for task, task_encoded in encoded.items():
        longest = max(len(e.prompt_ids) + max(len(c) for c in e.continuation_ids) for e in task_encoded)
        means, _ = reference_means(model, references[task], layers, longest, batch_size)
        plan = plan_scoring(task_encoded, batch_size) if mode == "now" else None
        for name, method, chosen in conditions(heads, random_sets):
            hooks = ablation_hooks(model, chosen, "value" if method == "zero" else "mean", means=means) \
                if method in ("mean", "zero") else []
            knockout = chosen if method == "knockout" else None
            if plan is not None:
                results[task, name] = label_log_likelihoods(model, plan, hooks=hooks, knockout_heads=knockout)
                sequences += plan.n_runs
            else:
                results[task, name] = shipped_label_log_likelihoods(model, task_encoded, batch_size, hooks, knockout)
                sequences += sum(1 if all(len(c) == 1 for c in e.continuation_ids) else len(e.continuation_ids)
                                 for e in task_encoded)
    return results, sequences


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "saved_models" / "toy_lm"))
    parser.add_argument("--tasks", default="repetition,category_pairs_4way_a")
    parser.add_argument("--n-items", type=positive_int, default=50)
    parser.add_argument("--threads", type=positive_int, nargs="+", default=[1])
    parser.add_argument("--skip-per-prompt", action="store_true", help="skip the one-sequence-per-pass baseline")
    args = parser.parse_args(argv)

    import torch

    model = load_model(resolve_model(args.model))
    heads = parse_heads(HEADS)
    config = PatternTaskConfig(n_items=args.n_items, demo_seeds=(0,))
    bos = choose_bos(model).token_id
    tasks = args.tasks.split(",")
    encoded = {task: encode_prompts(model.tokenizer, generate_prompts(task, config), bos) for task in tasks}
    references = {task: encode_prompts(model.tokenizer, generate_prompts(
        task, PatternTaskConfig(n_items=64, demo_seeds=(0,), seed=1000)), bos) for task in tasks}
    modes = [("per prompt", "shipped", 1), ("as shipped", "shipped", SHIPPED_BATCH_SIZE), ("now", "now", 16)]
    if args.skip_per_prompt:
        modes = modes[1:]
    print(f"model {args.model}; tasks {args.tasks}; {args.n_items} prompts per task (1 demonstration seed); "
          f"heads {HEADS}; methods {','.join(METHODS)}; {N_RANDOM_SETS} random draws asked for")
    for threads in args.threads:
        torch.set_num_threads(threads)
        shipped_label_log_likelihoods(model, encoded[tasks[0]][:4])  # warm-up
        timings, outputs = {}, {}
        for label, mode, batch_size in modes:
            start = time.perf_counter()
            outputs[label], sequences = experiment(model, encoded, references, heads, mode, batch_size)
            timings[label] = time.perf_counter() - start
            print(f"threads {threads}  {label:<11} {timings[label]:7.1f} s  {len(outputs[label]):3d} task x condition "
                  f"runs, {sequences:6d} sequences")
        for label in timings:
            if label != "now":
                print(f"threads {threads}  {label} / now: {timings[label] / timings['now']:.2f}x faster now")
        for key, log_likelihoods in outputs["now"].items():
            for label in timings:
                other = outputs[label][key]
                np.testing.assert_allclose(log_likelihoods, other, rtol=0, atol=1e-5)
                label_index = np.array([e.label_index for e in encoded[key[0]]])
                assert score_choices(log_likelihoods, label_index)[1].sum() == \
                    score_choices(other, label_index)[1].sum()
        print(f"threads {threads}  every condition run both ways agrees (log-likelihoods within 1e-5, equal "
              "accuracy counts)")


if __name__ == "__main__":
    main()
