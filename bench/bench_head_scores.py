"""Benchmark: head scores of a GPT-2-small-sized model (random weights, built from its config; no download).

Times the streaming engine (hooks reduce each layer's attention to lag statistics during
the forward pass) on the default prompt set, and the naive reference in the same
process: ``run_with_cache`` of every layer's scores and patterns per batch, then Python
loops over layers, heads, queries and lags. Prints times, their ratio, the largest
difference between the two, and the peak resident memory of each phase above the
loaded model (sampled from /proc every 5 ms).

    python bench/bench_head_scores.py                  # default prompt set (100 x 201 tokens)
    python bench/bench_head_scores.py --n-prompts 20   # quicker

The copying score is timed alone: its naive form (the 50,257 x 50,257 OV matrix per head,
20 GB in float64) cannot be built on this machine.
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from icl_cmr.cli.args import OneLineErrorParser, positive_int  # noqa: E402
from icl_cmr.config import ATTN_CRP_LAGS  # noqa: E402
from icl_cmr.heads.copying import model_copying_scores  # noqa: E402
from icl_cmr.heads.scores import stream_attention_scores  # noqa: E402
from icl_cmr.heads.hooks import hook_name
from icl_cmr.heads.models import load_model
from icl_cmr.heads.registry import resolve_model
from icl_cmr.heads.prompts import PromptConfig, default_token_pool, make_prompt_sets  # noqa: E402

GPT2_EOS = 50256


class PeakRss:
    """Peak resident set size (bytes) of this process while the context is open, sampled every 5 ms."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(0.005)

    def __enter__(self):
        self.peak = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def build_gpt2_small(directory: Path) -> Path:
    """GPT-2 small's architecture (12 layers x 12 heads, d_model 768, vocab 50,257) with random weights."""
    from tiny_models import make_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)  # unused by the engine; the bridge wants a tokenizer
    return directory


def naive_scores(model, repeat, prefix, block_len, prefix_block_len, offset, batch_size):
    """Reference: cache every layer, then loop over layers, heads, queries and lags (vectorised over nothing)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    lags = list(ATTN_CRP_LAGS)
    values = {kind: [[[[] for _ in lags] for _ in range(n_heads)] for _ in range(n_layers)]
              for kind in ("attn_scores", "pattern")}
    names = [hook_name(layer, kind) for layer in range(n_layers) for kind in values]
    for start in range(0, repeat.shape[0], batch_size):
        tokens = torch.as_tensor(repeat[start:start + batch_size])
        with torch.inference_mode():
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        for kind in values:
            for layer in range(n_layers):
                attn = cache[hook_name(layer, kind)].double().numpy()
                for head in range(n_heads):
                    for query in range(offset + block_len, offset + 2 * block_len):
                        for index, lag in enumerate(lags):
                            key = query - block_len + lag
                            if offset <= key < offset + block_len:
                                values[kind][layer][head][index].extend(attn[:, head, query, key].tolist())
        del cache
    stats = {}
    for kind, per_head in values.items():
        mean = np.array([[[np.mean(v) for v in head] for head in layer] for layer in per_head])
        sem = np.array([[[np.std(v, ddof=1) / np.sqrt(len(v)) for v in head] for head in layer] for layer in per_head])
        stats[kind] = (mean, sem)
    prefix_scores = np.zeros((n_layers, n_heads))
    names = [hook_name(layer, "pattern") for layer in range(n_layers)]
    with torch.inference_mode():
        _, cache = model.run_with_cache(torch.as_tensor(prefix), names_filter=lambda n: n in names)
    for layer in range(n_layers):
        pattern = cache[names[layer]].double().numpy()
        for head in range(n_heads):
            totals = []
            for b in range(prefix.shape[0]):
                for query in range(offset + prefix_block_len, prefix.shape[1]):
                    target = prefix[b, :query] == prefix[b, query - prefix_block_len + 1]
                    totals.append(pattern[b, head, query, :query][target].sum())
            prefix_scores[layer, head] = np.mean(totals)
    return stats, prefix_scores


def reduction_only(model, tokens, block_len, offset) -> None:
    """Time only the reduction of one cached batch (all layers, scores + patterns): vectorised vs loops."""
    from icl_cmr.heads.scores import LagAccumulator

    names = [hook_name(layer, kind) for layer in range(model.cfg.n_layers) for kind in ("attn_scores", "pattern")]
    with torch.inference_mode():
        _, cache = model.run_with_cache(torch.as_tensor(tokens), names_filter=lambda n: n in names)
    start = time.perf_counter()
    for name in names:
        accumulator = LagAccumulator(block_len, offset)
        accumulator.update(cache[name])
        accumulator.result()
    vectorised = time.perf_counter() - start
    start = time.perf_counter()
    for name in names:
        attn = cache[name].double().numpy()
        for head in range(attn.shape[1]):
            for lag in ATTN_CRP_LAGS:
                values = [attn[:, head, query, query - block_len + lag]
                          for query in range(offset + block_len, offset + 2 * block_len)
                          if offset <= query - block_len + lag < offset + block_len]
                np.mean(values), np.std(values, ddof=1)
    loops = time.perf_counter() - start
    print(f"reduction only, one cached batch of {tokens.shape[0]} prompts x {len(names)} tensors: vectorised "
          f"{vectorised:.3f} s, loops over heads/lags/queries {loops:.2f} s ({loops / vectorised:.0f}x)")


def main() -> None:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    defaults = PromptConfig()
    parser.add_argument("--n-prompts", type=positive_int, default=defaults.n_prompts)
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch intra-op threads (default: torch's); 1 is steadier on a busy shared CPU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = PromptConfig(n_prompts=args.n_prompts, batch_size=args.batch_size)

    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(resolve_model(str(build_gpt2_small(Path(tmp) / "gpt2_small_random"))))
    pool = default_token_pool(int(model.cfg.d_vocab), special_ids=[GPT2_EOS])
    repeat, prefix = make_prompt_sets(pool, GPT2_EOS, config)  # GPT-2's BOS is its EOS id
    offset = 1
    print(f"model: GPT-2 small config, random weights ({model.cfg.n_layers} x {model.cfg.n_heads} heads); "
          f"torch threads {torch.get_num_threads()}; os.cpu_count {os.cpu_count()}; "
          f"load average {os.getloadavg()[0]:.1f} (shared machine)")
    print(f"prompts: {repeat.shape[0]} x {repeat.shape[1]} tokens (block {config.block_len}), "
          f"prefix {prefix.shape[0]} x {prefix.shape[1]}; batch {config.batch_size}")
    # Warm-up (lazy imports, allocator pools, hook registration) so that neither phase pays it.
    stream_attention_scores(model, repeat[:1], config.block_len, offset, prefix[:1], config.prefix_block_len, 1,
                            progress=False)
    base = PeakRss.current()

    with PeakRss() as fast_mem:
        start = time.perf_counter()
        fast = stream_attention_scores(model, repeat, config.block_len, offset, prefix, config.prefix_block_len,
                                       config.batch_size, progress=False)
        fast_s = time.perf_counter() - start
    print(f"streaming engine (matching, CRPs, prefix): {fast_s:.2f} s; peak RSS above model "
          f"{(fast_mem.peak - base) / 2**20:.0f} MiB")

    if not args.skip_naive:
        with PeakRss() as naive_mem:
            start = time.perf_counter()
            stats, naive_prefix = naive_scores(model, repeat, prefix, config.block_len, config.prefix_block_len,
                                               offset, config.batch_size)
            naive_s = time.perf_counter() - start
        diff = max(np.nanmax(np.abs(fast.crp_scores.mean - stats["attn_scores"][0])),
                   np.nanmax(np.abs(fast.crp_scores.sem - stats["attn_scores"][1])),
                   np.nanmax(np.abs(fast.crp_probs.mean - stats["pattern"][0])),
                   np.nanmax(np.abs(fast.prefix_matching_score - naive_prefix)))
        print(f"naive reference (run_with_cache + loops): {naive_s:.2f} s; peak RSS above model "
              f"{(naive_mem.peak - base) / 2**20:.0f} MiB")
        print(f"speed-up: {naive_s / fast_s:.1f}x; max |fast - naive| = {diff:.2e}")
    reduction_only(model, repeat[:config.batch_size], config.block_len, offset)
    full_patterns = 2 * model.cfg.n_layers * repeat.shape[0] * model.cfg.n_heads * repeat.shape[1] ** 2 * 4
    print(f"(all layers' scores + patterns for all prompts at once would take {full_patterns / 2**30:.2f} GiB)")

    start = time.perf_counter()
    copying = model_copying_scores(model)
    print(f"copying score, all {copying.size} heads: {time.perf_counter() - start:.2f} s "
          f"(range {np.nanmin(copying):.3f}..{np.nanmax(copying):.3f})")


if __name__ == "__main__":
    main()
