"""Benchmark: peak memory of the head-score pass at real vocabulary size, and against the number of layers.

Two questions, each case run in a fresh Python process (peak resident memory is
process-wide), models built from configs with random weights (no download):

1. **Copying score.** A Llama-3-style model (grouped-query 16/4 heads, vocab 128,256,
   d_model 1024, 4 layers: about 1.1 GiB of float32 weights, the CPU proxy of
   Llama-3-8B's vocabulary-dominated weight processing): peak with the streamed copying
   score (``icl_cmr.heads.copying.model_copying_scores``) against the attention pass alone, and
   against the former method (TransformerLens's ``enable_compatibility_mode()`` processed
   weights) as the baseline. Target: with - without <= 25% of the weights' size.
2. **Layers.** GPT-2 and GPT-NeoX models of the same width (d_model 768, 12 heads) with
   2 and 8 layers: peak above the loaded model during the streaming pass, with and without
   the release of each layer's retained pattern (``icl_cmr.heads.hooks``). Target: the
   8-layer peak equals the 2-layer peak.

    python bench/bench_head_score_memory.py                  # everything (several minutes on 2 cores)
    python bench/bench_head_score_memory.py --only layers    # one part
    python bench/bench_head_score_memory.py --only gpu --device cuda   # Llama-3-8B's shape, bfloat16, one GPU
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: The CPU proxy of the issue: Llama-3's vocabulary at a quarter of its width, 4 layers.
PROXY = dict(vocab_size=128_256, hidden_size=1024, num_hidden_layers=4, num_attention_heads=16,
             num_key_value_heads=4, intermediate_size=2816, max_position_embeddings=512)
#: Llama-3-8B's shape, for a GPU (about 15 GiB in bfloat16; built on the CPU in bfloat16 first).
LLAMA3_8B = dict(vocab_size=128_256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, intermediate_size=14_336, max_position_embeddings=8192)
#: GPT-2 small's width for the layer comparison.
WIDTH = dict(d_model=768, n_heads=12)


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _build(kind: str, directory: Path, n_layers: int = 0) -> Path:
    import torch
    import transformers as tf

    from tiny_models import make_tokenizer

    torch.manual_seed(0)
    if kind in ("proxy", "llama3-8b"):
        config = tf.LlamaConfig(bos_token_id=0, eos_token_id=0, **(PROXY if kind == "proxy" else LLAMA3_8B))
        if kind == "llama3-8b":
            config.torch_dtype = torch.bfloat16
            tf.AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16).save_pretrained(directory)
            make_tokenizer().save_pretrained(directory)
            return directory
    elif kind == "gpt2":
        config = tf.GPT2Config(n_layer=n_layers, n_head=WIDTH["n_heads"], n_embd=WIDTH["d_model"], n_positions=512)
    else:
        config = tf.GPTNeoXConfig(num_hidden_layers=n_layers, num_attention_heads=WIDTH["n_heads"],
                                  hidden_size=WIDTH["d_model"], intermediate_size=4 * WIDTH["d_model"],
                                  max_position_embeddings=512, bos_token_id=0, eos_token_id=0)
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)
    return directory


def _gpu_peak_mib(device: str):
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None


def run_case(case: str, model_dir: str, n_prompts: int, retain: bool, device: str = "cpu",
             dtype: str = "float32") -> dict:
    """One measurement inside this process; returns peaks in MiB (CPU RSS, and torch's CUDA peak on a GPU)."""
    import numpy as np
    import torch

    import icl_cmr.heads.hooks as attention_hooks
    from bench_head_scores import PeakRss
    from icl_cmr.heads.copying import copying_scores, model_copying_scores
    from icl_cmr.heads.scores import stream_attention_scores
    from icl_cmr.heads.models import load_model
    from icl_cmr.heads.registry import resolve_model
    from icl_cmr.heads.prompts import PromptConfig, default_token_pool, make_prompt_sets

    torch.set_num_threads(1)
    if retain:  # the baseline: patterns kept on the modules as TransformerLens leaves them
        attention_hooks._release_retained_patterns = lambda model: None
    before_load = _rss_mib()
    model = load_model(resolve_model(model_dir), device=device, dtype=dtype)
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    loaded = _rss_mib()
    config = PromptConfig(n_prompts=n_prompts, batch_size=min(n_prompts, PromptConfig().batch_size))
    pool = default_token_pool(min(int(model.cfg.d_vocab), 300), special_ids=[0])
    repeat, prefix = make_prompt_sets(pool, 0, config)
    gpu_loaded = _gpu_peak_mib(device)
    with PeakRss() as attention_peak:
        stream_attention_scores(model, repeat, config.block_len, 1, prefix, config.prefix_block_len,
                                config.batch_size, progress=False)
    result = {"weights_mib": weights, "before_load_mib": before_load, "loaded_mib": loaded,
              "attention_peak_mib": attention_peak.peak / 2**20, "gpu_loaded_peak_mib": gpu_loaded,
              "gpu_attention_peak_mib": _gpu_peak_mib(device)}
    start = time.perf_counter()
    if case == "streamed":
        with PeakRss() as copying_peak:
            scores = model_copying_scores(model)
    elif case == "processed":
        with PeakRss() as copying_peak:
            model.enable_compatibility_mode(disable_warnings=True)
            with torch.inference_mode():
                scores = copying_scores(model.W_E, model.W_V, model.W_O, model.W_U, n_heads=int(model.cfg.n_heads))
    else:
        return {**result, "process_peak_mib": _peak_rss_mib(), "gpu_process_peak_mib": _gpu_peak_mib(device)}
    result.update(copying_s=time.perf_counter() - start, copying_peak_mib=copying_peak.peak / 2**20,
                  process_peak_mib=_peak_rss_mib(), gpu_process_peak_mib=_gpu_peak_mib(device),
                  copying_scores=np.round(scores, 6).tolist())
    return result


def _subprocess(case: str, model_dir: Path, n_prompts: int, retain: bool = False, device: str = "cpu",
                dtype: str = "float32") -> dict:
    command = [sys.executable, __file__, "--case", case, "--model-dir", str(model_dir), "--n-prompts", str(n_prompts),
               "--device", device, "--dtype", dtype]
    if retain:
        command.append("--retain")
    out = subprocess.run(command, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def gpu_part(root: Path, n_prompts: int, device: str) -> None:
    """Llama-3-8B's shape in bfloat16 on one GPU: torch's peak allocation with and without the copying score."""
    model_dir = _build("llama3-8b", root / "llama3_8b")
    runs = {case: _subprocess(case, model_dir, n_prompts, device=device, dtype="bfloat16")
            for case in ("none", "streamed")}
    weights = runs["none"]["weights_mib"]
    without, with_copying = runs["none"]["gpu_process_peak_mib"], runs["streamed"]["gpu_process_peak_mib"]
    import torch

    print(f"Llama-3-8B shape, bfloat16, {torch.cuda.get_device_name(device)}: weights {weights / 1024:.1f} GiB; "
          f"{n_prompts} repeat prompts; torch peak allocated without copying {without / 1024:.2f} GiB, with the "
          f"streamed copying score {with_copying / 1024:.2f} GiB (+{(with_copying - without) / weights:.0%} of the "
          f"weights; {runs['streamed']['copying_s']:.1f} s)")


def copying_part(root: Path, n_prompts: int) -> None:
    model_dir = _build("proxy", root / "proxy")
    runs = {case: _subprocess(case, model_dir, n_prompts) for case in ("none", "streamed", "processed")}
    weights = runs["none"]["weights_mib"]
    without = runs["none"]["process_peak_mib"]
    print(f"CPU proxy (Llama-3-style, vocab {PROXY['vocab_size']:,}, d_model {PROXY['hidden_size']}, "
          f"{PROXY['num_hidden_layers']} layers, GQA {PROXY['num_attention_heads']}/{PROXY['num_key_value_heads']}): "
          f"weights {weights / 1024:.2f} GiB float32; {n_prompts} repeat prompts")
    print(f"  process peak RSS without copying score:      {without / 1024:.2f} GiB")
    for case, label in (("streamed", "streamed (icl_cmr.heads.copying)"), ("processed", "processed weights (before)")):
        run = runs[case]
        extra = run["process_peak_mib"] - without
        print(f"  with copying score, {label:<27} {run['process_peak_mib'] / 1024:.2f} GiB: "
              f"+{extra / 1024:.2f} GiB = {extra / weights:.0%} of the weights; {run['copying_s']:.1f} s")
    ratio = (runs["processed"]["process_peak_mib"] - without) / max(runs["streamed"]["process_peak_mib"] - without, 1.0)
    agree = max(abs(a - b) for x, y in zip(runs["streamed"]["copying_scores"], runs["processed"]["copying_scores"])
                for a, b in zip(x, y))
    print(f"  extra memory, processed / streamed: {ratio:.1f}x; max |score difference| {agree:.1e}; "
          f"target: +<= 25% of the weights")


def layers_part(root: Path, n_prompts: int) -> None:
    print(f"Layers (d_model {WIDTH['d_model']}, {WIDTH['n_heads']} heads, {n_prompts} prompts of 201 tokens, "
          f"batch {min(n_prompts, 20)}): peak RSS above the loaded model during the streaming pass")
    for kind in ("gpt2", "neox"):
        row = {}
        for n_layers in (2, 8):
            model_dir = _build(kind, root / f"{kind}_{n_layers}", n_layers)
            for retain in (False, True):
                run = _subprocess("none", model_dir, n_prompts, retain=retain)
                row[(n_layers, retain)] = run["attention_peak_mib"] - run["loaded_mib"]
        for retain, label in ((False, "released (icl_cmr)"), (True, "retained (before)")):
            two, eight = row[(2, retain)], row[(8, retain)]
            print(f"  {kind:<5} {label:<19} 2 layers {two:6.0f} MiB, 8 layers {eight:6.0f} MiB "
                  f"(8 - 2 layers: {eight - two:+.0f} MiB)")


def main() -> None:
    from icl_cmr.cli.args import OneLineErrorParser, device_arg, positive_int

    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("copying", "layers", "gpu"), default=None,
                        help="one part; 'gpu' (Llama-3-8B's shape in bfloat16 on --device) runs only when asked")
    parser.add_argument("--device", type=device_arg, default="cpu", help="cuda or cuda:N for the 'gpu' part")
    parser.add_argument("--dtype", default="float32", help="(internal)")
    parser.add_argument("--n-prompts", type=positive_int, default=20)
    parser.add_argument("--case", choices=("none", "streamed", "processed"), default=None, help="(internal)")
    parser.add_argument("--model-dir", default=None, help="(internal)")
    parser.add_argument("--retain", action="store_true", help="(internal)")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.model_dir, args.n_prompts, args.retain, args.device, args.dtype)))
        return
    if args.only == "gpu" and not args.device.startswith("cuda"):
        parser.error("--only gpu needs --device cuda (or cuda:N)")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; one torch thread per case")
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "copying"):
            copying_part(Path(tmp), args.n_prompts)
        if args.only in (None, "layers"):
            layers_part(Path(tmp), args.n_prompts)
        if args.only == "gpu":
            gpu_part(Path(tmp), args.n_prompts, args.device)


if __name__ == "__main__":
    main()
