"""Benchmark: prompts per second of the ablation experiment, batched versus one prompt at a time.

A GPT-2-small-sized model (12 layers, 12 heads, d_model 768, vocabulary 50257) with random
weights is built locally (no download) and run on random token prompts under the three
conditions of [LI24] Fig 8 (intact, 14 heads value-ablated, 14 random heads value-ablated),
first one prompt per forward pass (the authors' ``ablation.py``), then ``--batch-size``
prompts per pass (ours). Per-prompt ICL scores of the two ways are checked to agree. Both
run in this process, so the ratio is comparable on any machine; absolute numbers depend
on it (and on other load).

Usage::

    python bench/bench_ablation.py [--n-prompts 16] [--seq-len 512] [--batch-size 8] [--device cpu]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from icl_cmr.interventions.icl_ablation import conditions  # noqa: E402
from icl_cmr.cli.args import OneLineErrorParser, device_arg, int_range, positive_int  # noqa: E402
from icl_cmr.interventions.head_ablation import ablation_hooks, random_heads  # noqa: E402
from icl_cmr.interventions.icl_score import ICLScoreConfig, icl_scores, token_losses  # noqa: E402
from icl_cmr.heads.models import load_model
from icl_cmr.heads.registry import resolve_model

#: [LI24]'s GPT-2 head list has 14 heads (10% of 144).
N_ABLATED = 14


def build_random_gpt2(folder: Path) -> Path:
    """Save a randomly initialised GPT-2-small-sized model with a one-token tokenizer (ids are random anyway)."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
    tokenizer = Tokenizer(models.WordLevel({"<|endoftext|>": 0}, unk_token="<|endoftext|>"))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>").save_pretrained(folder)
    return folder


def main() -> None:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-prompts", type=positive_int, default=16)
    parser.add_argument("--seq-len", type=int_range(3), default=512, help="tokens per prompt (>= 3 for an ICL score)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--device", type=device_arg, default="cpu")
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(resolve_model(str(build_random_gpt2(Path(tmp) / "gpt2-random"))), device=args.device)
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    top = random_heads(n_layers, n_heads, N_ABLATED, seed=1)  # stands in for the top CMR-like heads
    control = random_heads(n_layers, n_heads, N_ABLATED, seed=2, exclude=top)
    head_sets = conditions(top, [control])
    tokens = torch.randint(1, int(model.cfg.d_vocab), (args.n_prompts, args.seq_len),
                           generator=torch.Generator().manual_seed(0))
    icl_config = ICLScoreConfig(late_index=min(500, args.seq_len - 2), early_index=min(50, args.seq_len - 3))
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {args.n_prompts} prompts x "
          f"{args.seq_len} tokens, GPT-2-small-sized random model, {N_ABLATED} heads ablated")
    token_losses(model, tokens[:1], batch_size=1)  # warm-up

    rates, scores = {}, {}
    for mode, batch_size in (("one prompt at a time", 1), (f"batched ({args.batch_size})", args.batch_size)):
        for name, heads in head_sets.items():
            hooks = ablation_hooks(model, heads, "value")
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            losses = token_losses(model, tokens, hooks, batch_size=batch_size)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            rates[mode, name] = args.n_prompts / (time.perf_counter() - start)
            scores[mode, name] = icl_scores(losses, icl_config)
    modes = list(dict.fromkeys(mode for mode, _ in rates))
    print(f"{'condition':<18}" + "".join(f"{mode:>24}" for mode in modes) + f"{'ratio':>8}")
    for name in head_sets:
        row = [rates[mode, name] for mode in modes]
        print(f"{name:<18}" + "".join(f"{rate:>19.2f} pr/s" for rate in row) + f"{row[1] / row[0]:>7.2f}x")
        np.testing.assert_allclose(scores[modes[0], name], scores[modes[1], name], atol=1e-3)
    total = [args.n_prompts * len(head_sets) / sum(args.n_prompts / rates[mode, n] for n in head_sets) for mode in modes]
    print(f"{'all conditions':<18}" + "".join(f"{rate:>19.2f} pr/s" for rate in total) + f"{total[1] / total[0]:>7.2f}x")
    print("ICL scores of batched and one-at-a-time runs agree (atol 1e-3)")


if __name__ == "__main__":
    main()
