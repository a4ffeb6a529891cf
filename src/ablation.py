"""Ablate the top CMR-like heads of a model and compare in-context learning ([LI24] Fig 8; DESIGN.md section 5).

For every evaluation prompt (C4 English validation documents of >= 512 tokens cut to 512,
or local text with ``--data``) the per-token loss is computed for the intact model, with the
top ``--fraction`` CMR-like heads ablated, and with ``--n-random-sets`` seeded random sets of
as many heads ablated. ICL score = loss at index ``--late-index`` minus loss at
``--early-index`` (500 and 50 in the paper). Writes:

* ``<out-dir>/ablation_experiment_<model>.pkl``: the authors' keys ``original_icl_score``,
  ``ablated_icl_score``, ``ablated_rand_icl_score`` (arrays [n_eval]) plus per-set control
  scores, mean loss by position per condition (``loss_by_position`` / ``_sem``), head lists,
  seeds, the statistics table and ``metadata``;
* ``<out-dir>/ablation_experiment_<model>_stats.{csv,txt}``: paired t-test, Wilcoxon,
  bootstrap CI of the mean difference, Cohen's d_z for each pair of conditions;
* ``<figs-dir>/ablation/<model>_icl_bars.pdf`` and ``<model>_loss_by_position.pdf``.

Every argument and input (heads, fit file, data, output folders) is checked before the model
loads, and the outputs are written only once the whole result is computed.

Resumable: each batch's results go to ``<out-dir>/.ablation_experiment_<model>.partial/``
atomically; rerunning the same command continues where it stopped (the default, as for every
long job of this project; ``--restart`` discards them, ``--resume`` is accepted and changes
nothing). Each saved batch is verified when resuming; a damaged one (truncated, garbled, wrong
shape) is discarded with a warning and recomputed, so the final file equals an uninterrupted
run's. The metadata says whether the run was resumed (``resumed``, ``resumed_batches``) and gives
``compute_time_all_sessions_s`` (seconds spent evaluating batches and mean activations, summed over
every session; loading excluded) and ``wall_time_this_session_s`` (this session, loading included).
``--from-saved FILE`` re-analyses and re-plots an existing result file (ours or the authors').

Examples::

    python src/ablation.py --model_name gpt2-small          # heads from saved_scores/gpt2-small/cmr_fit_gpt2-small.pkl
    python src/ablation.py --model_name ./my_model --heads L1H0,L1H3 --data texts/ --seq-len 256 --late-index 246
    python src/ablation.py --from-saved ../shared/official/saved_ablation/ablation_experiment_gpt2-small.pkl
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from icl_cmr.cli.args import (OneLineErrorParser, device_arg, fraction, given_options, int_range, non_negative_int,
                              paired_count, positive_int, refuse_options, run_cli, seed_int, setup_logging)
from icl_cmr.cli.flags import flag_errors
from icl_cmr.errors import InputError
from icl_cmr.experiments.ablation import (AblationSettings, check_ablation, discard_partial, run_ablation,
                                          run_outputs, saved_result_outputs)
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.outputs import PendingWrites, log_written
from icl_cmr.heads.models import DTYPES
from icl_cmr.interventions.head_ablation import ABLATION_METHODS
from icl_cmr.interventions.icl_ablation import AblationConfig
from icl_cmr.interventions.icl_score import ICLScoreConfig
from icl_cmr.interventions.texts import TextDataConfig
from icl_cmr.stats import PairedStatsConfig

logger = logging.getLogger("ablation")


def build_parser() -> argparse.ArgumentParser:
    config, icl, data = AblationConfig(), ICLScoreConfig(), TextDataConfig()
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-m", "--model_name", "--model-name", dest="model_name", default="gpt2-small",
                        help="registry name (gpt2-small, pythia-70m, ..., mistral-7b, llama3-8b), Hugging Face id "
                             "or local folder saved with save_pretrained")
    heads = parser.add_argument_group("heads to ablate (exactly one)")
    heads.add_argument("--heads", default=None, help="explicit labels, e.g. L5H1,L6H9")
    heads.add_argument("--heads-file", type=Path, default=None,
                       help="text file of labels (comma/space/newline separated; # starts a comment)")
    heads.add_argument("--fits-dir", type=Path, default=Path("saved_scores"),
                       help="without --heads/--heads-file/--fit-file, use <fits-dir>/<model>/cmr_fit_<model>.pkl "
                            "(fit_attn_score.py's output; default: %(default)s)")
    heads.add_argument("--fit-file", type=Path, default=None,
                       help="pickle with 'fitted_MSE' [L, H] (fit_attn_score.py's cmr_fit_<model>.pkl): the top "
                            "--fraction heads by lowest CMR distance are ablated (NaN never picked)")
    parser.add_argument("--fraction", type=fraction, default=config.fraction,
                        help="fraction of all heads taken from the fit file ([LI24]: top 10%%; count floor(f L H)); "
                             "not with --heads / --heads-file")
    parser.add_argument("--method", choices=ABLATION_METHODS, default=config.method,
                        help="value: zero value vectors ([LI24]); output: zero the head output hook_z (identical "
                             "in exact arithmetic); mean: per-position mean hook_z over the evaluation set")
    parser.add_argument("--n-random-sets", type=positive_int, default=config.n_random_sets,
                        help="random control sets; ablated_rand_icl_score is their per-prompt mean ([LI24]: 1)")
    parser.add_argument("--allow-overlap", action="store_true",
                        help="random sets may include ablated heads, as [LI24] drew them (default: excluded)")
    parser.add_argument("--seed", type=seed_int, default=config.seed,
                        help="random set k uses seed + k (a seed repeating an earlier set is skipped)")
    parser.add_argument("--data", type=Path, default=None,
                        help="local .txt file (one document), .jsonl file (one document per line, field 'text') "
                             "or a folder of them; default: stream C4 English validation ([LI24])")
    parser.add_argument("--n-eval", type=paired_count, default=config.n_eval,
                        help="evaluation prompts ([LI24] script: 1000; their GPT-2 file: 5000)")
    parser.add_argument("--batch-size", type=positive_int, default=config.batch_size, help="prompts per forward pass")
    # >= 3: the ICL score needs 0 <= early < late <= seq_len - 2 (ICLScoreConfig.validate)
    parser.add_argument("--seq-len", type=int_range(3), default=data.seq_len,
                        help="tokens per prompt, BOS included ([LI24]: 512)")
    parser.add_argument("--min-tokens", type=positive_int, default=None,
                        help="keep documents with at least this many tokens (default: --seq-len; [LI24]: 512)")
    parser.add_argument("--late-index", type=positive_int, default=icl.late_index,
                        help="loss index of the late token ([LI24]: 500)")
    parser.add_argument("--early-index", type=non_negative_int, default=icl.early_index,
                        help="loss index of the early token ([LI24]: 50)")
    parser.add_argument("--bos", action=argparse.BooleanOptionalAction, default=None,
                        help="start every prompt with a BOS token (--bos) or not (--no-bos); default: the tokenizer's "
                             "own BOS token when it defines one, none otherwise (loss index 0 is then a text token)")
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--restart", action="store_true",
                        help="discard saved partial results of this model and start over (default: resume)")
    parser.add_argument("--resume", action="store_true",
                        help="resume an interrupted run (the default; accepted for uniformity with the other scripts)")
    parser.add_argument("--stop-after", type=positive_int, default=None,
                        help="evaluate at most this many new prompts (whole batches), then stop; rerun to resume")
    parser.add_argument("--from-saved", type=Path, default=None,
                        help="re-analyse and re-plot an existing result file instead of running a model")
    parser.add_argument("--out-dir", type=Path, default=Path("saved_ablation"), help="result folder")
    parser.add_argument("--figs-dir", type=Path, default=Path("figs"), help="figures go to <figs-dir>/ablation/")
    parser.add_argument("--n-bootstrap", type=positive_int, default=PairedStatsConfig().n_bootstrap,
                        help="bootstrap resamples for the CI of mean differences")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


#: Options that only a model run uses (not ``--from-saved``'s re-analysis).
RUN_OPTIONS = ("model_name", "heads", "heads_file", "fits_dir", "fit_file", "fraction", "method", "n_random_sets",
               "allow_overlap", "data", "n_eval", "batch_size", "seq_len", "min_tokens", "late_index", "early_index",
               "bos", "device", "dtype", "restart", "resume", "stop_after")


def check_option_groups(parser: argparse.ArgumentParser, args: argparse.Namespace, given: frozenset) -> None:
    """Refuse options that the other options given make meaningless (they would be silently ignored)."""
    if args.from_saved is not None:
        refuse_options(parser, given, RUN_OPTIONS, "with --from-saved (it re-analyses a saved result)")
    if args.heads is not None or args.heads_file is not None:
        refuse_options(parser, given, ("fraction",), "with --heads / --heads-file (it takes the top heads of a "
                                                     "fit file)")
    if args.heads is not None or args.heads_file is not None or args.fit_file is not None:
        refuse_options(parser, given, ("fits_dir",), "with --heads / --heads-file / --fit-file (it locates the "
                                                     "default fit file)")


def settings_from(args: argparse.Namespace, data_description: Optional[str] = None) -> AblationSettings:
    """The run's settings from the parsed flags."""
    return AblationSettings(model=args.model_name, heads=args.heads, heads_file=args.heads_file,
                            fit_file=args.fit_file, fits_dir=args.fits_dir, fraction=args.fraction,
                            method=args.method, n_random_sets=args.n_random_sets, allow_overlap=args.allow_overlap,
                            seed=args.seed, data=args.data, data_description=data_description, n_eval=args.n_eval,
                            batch_size=args.batch_size, seq_len=args.seq_len, min_tokens=args.min_tokens,
                            late_index=args.late_index, early_index=args.early_index, bos=args.bos,
                            device=args.device, dtype=args.dtype, n_bootstrap=args.n_bootstrap)


def main(argv: Optional[Sequence[str]] = None) -> Optional[int]:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_option_groups(parser, args, given_options(parser, argv))
    setup_logging(args.verbose, progress=not args.no_progress)
    pending = PendingWrites()
    with flag_errors(parser, from_saved="--from-saved", model="--model_name"):
        if args.restart and args.resume:
            raise InputError("give --restart (discard saved partial results) or --resume (the default), not both")
        check_writable_dir(args.out_dir, "--out-dir")
        check_writable_dir(args.figs_dir / "ablation", "--figs-dir")
        if args.from_saved is not None:
            print(saved_result_outputs(args.from_saved, args.out_dir, args.figs_dir, args.n_bootstrap, args.seed,
                                       pending))
            log_written(logger, pending.commit())
            return None
        plan = check_ablation(settings_from(args), args.out_dir, restart=args.restart)
        run = run_ablation(plan, args.out_dir, restart=args.restart, stop_after=args.stop_after,
                           progress=not args.no_progress)
    if run is None:
        return None
    text = run_outputs(run, args.out_dir, args.figs_dir, args.n_bootstrap, pending)
    print(text)
    log_written(logger, pending.commit())
    discard_partial(args.out_dir, run.model_name)
    return None


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
