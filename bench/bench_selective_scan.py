"""Benchmark: the induction task's Mamba, our chunked scan vs ``transformers``' own PyTorch path.

In one process and one thread, on the same weights (the default 2-layer, d_model 64 model):

* a training step (forward and backward of the last-position loss) at batch 8 x 256, the
  library's ``MambaForCausalLM.forward`` (its sequential PyTorch scan; ``mamba_ssm`` kernels are
  CUDA-only) vs :meth:`icl_cmr.synthetic.mamba.InductionMamba.last_logits` (numba scan);
* one forward pass of a single sequence at ``--length`` (default 2^14) both ways, with the
  peak resident memory of each (Linux ``VmHWM``, reset before each).

Prints seconds and the ratio library / ours. Usage::

    python bench/bench_selective_scan.py [--length 16384] [--repeats 2]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from transformers import MambaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from icl_cmr.cli.args import OneLineErrorParser, int_range, positive_int  # noqa: E402
from icl_cmr.synthetic.mamba import build_mamba  # noqa: E402


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_gib() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return float("nan")


def _best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = OneLineErrorParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int_range(16, 2 ** 20), default=2 ** 14,
                        help="inference length (default 2^14)")
    parser.add_argument("--repeats", type=positive_int, default=2, help="best of this many runs (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ours = build_mamba().train()
    library = MambaForCausalLM(ours.config).train()
    library.load_state_dict(ours.state_dict())
    tokens = torch.randint(0, 15, (8, 256), generator=torch.Generator().manual_seed(1))

    def step(model, logits_fn):
        model.zero_grad(set_to_none=True)
        logits_fn(tokens).logsumexp(-1).mean().backward()

    step(ours, ours.last_logits)                              # compile the numba kernels
    ours_s = _best_of(args.repeats, lambda: step(ours, ours.last_logits))
    library_s = _best_of(args.repeats, lambda: step(library, lambda t: library(t).logits[:, -1]))
    print(f"training step, batch 8 x 256: library {library_s:.3f} s, ours {ours_s:.3f} s, "
          f"ratio {library_s / ours_s:.1f}x")

    long_tokens = torch.randint(0, 15, (1, args.length), generator=torch.Generator().manual_seed(2))
    ours.eval()
    library.eval()
    with torch.no_grad():
        _reset_peak()
        ours_s = _best_of(args.repeats, lambda: ours.last_logits(long_tokens))
        ours_peak = _peak_gib()
        _reset_peak()
        library_s = _best_of(args.repeats, lambda: library(long_tokens).logits[:, -1])
        library_peak = _peak_gib()
    print(f"forward, 1 x {args.length}: library {library_s:.2f} s (peak RSS {library_peak:.2f} GiB), "
          f"ours {ours_s:.2f} s (peak RSS {ours_peak:.2f} GiB), ratio {library_s / ours_s:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
