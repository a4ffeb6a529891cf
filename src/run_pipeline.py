"""The main job: the whole analysis on one model, by default the bundled toy language model.

Runs, in order, the experiment scripts a user would run by hand (each is called in-process
through its ``main(argv)``, so this file only chooses arguments):

1. ``compute_head_scores.py``: matching / copying / prefix-matching scores and the attention CRP;
2. ``fit_attn_score.py``: every head fitted to CMR with the shipped grid, per-model figures;
3. ``ablation.py``: ICL scores intact, top-10% CMR-like heads ablated, random heads ablated;

then prints a summary table. Every step's arguments and inputs (the grid, ``--data``, ``--fraction``,
the output folders) are checked before the first step runs. Outputs are written by the steps, but
the run as a whole is all or nothing: if a step fails, every output file gets back its content
from before the run. A rerun whose results equal the saved files' (numbers bit for bit; only
timestamps, wall times, the git commit and package versions may differ) leaves those files
untouched, so the quick start does not dirty a checkout. PyTorch's CPU kernels are pinned to AVX2
so that the numbers do not depend on whether the CPU has AVX-512.

With no arguments it runs offline on ``saved_models/toy_lm``
(a 256-token-context model, so the ICL score reads the loss at index 246 instead of the
paper's 500; see README) and evaluates ICL on the held-out standard-library files the model
never saw in training. ``--model gpt2-small`` (or any name or folder) runs the same on
another model, with C4 as the paper's ICL data unless ``--data`` is given.

Example::

    python src/run_pipeline.py
    python src/run_pipeline.py --model gpt2-small --device cuda
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

import ablation
import compute_head_scores
import fit_attn_score
from icl_cmr.cli.args import OneLineErrorParser, device_arg, fraction, positive_int, run_cli, setup_logging
from icl_cmr.config import CMR_LIKE_THRESHOLD
from icl_cmr.cli.flags import flag_errors
from icl_cmr.errors import InputError
from icl_cmr.cli.fit_args import load_grid
from icl_cmr.interventions.icl_score import ICLScoreConfig
from icl_cmr.files.reading import load_json
from icl_cmr.files.writing import save_text
from icl_cmr.files.results import read_ablation_result
from icl_cmr.heads.models import resolve_model
from icl_cmr.files.outputs import HoldWrittenLines, OutputGuard, portable_path
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.devices import pin_cpu_kernels
from icl_cmr.files.scores import fit_result_paths
from icl_cmr.files.grids import DEFAULT_GRID_PATH
from icl_cmr.interventions.texts import TextDataConfig

logger = logging.getLogger("run_pipeline")

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The model the project trains and ships (issue 6; see README "The bundled model").
BUNDLED_MODEL = REPO_ROOT / "saved_models" / "toy_lm"
#: Tokens between the ICL score's late index and the end of the prompt: the paper reads
#: index 500 of 512-token prompts; a shorter context keeps the same margin shape
#: (DESIGN.md section 9 measured the bundled model at "positions near 246 vs 50").
LATE_INDEX_MARGIN = 10
#: Characters per held-out piece, per prompt token: the bundled tokenizer averages 2.1
#: characters per token on the held-out files (measured), so pieces of 4 x seq_len
#: characters nearly always reach seq_len tokens.
CHARS_PER_TOKEN_MARGIN = 4
#: Heads listed in the printed summary.
N_SUMMARY_HEADS = 8


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="Head scores, CMR fits and ablation on one model, with a summary.")
    parser.add_argument("--model", default=str(BUNDLED_MODEL),
                        help="registry name, Hugging Face id or local folder (default: the bundled toy LM)")
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    parser.add_argument("--data", type=Path, default=None,
                        help="ICL text: a .txt file (one document), a .jsonl file (one document per line, field "
                             "'text') or a folder of them (default: held-out stdlib files for the bundled model, C4 "
                             "English validation otherwise)")
    parser.add_argument("--n-eval", type=positive_int, default=ablation.AblationConfig().n_eval,
                        help="prompts for the ablation (default: %(default)s, the paper's)")
    parser.add_argument("--fraction", type=fraction, default=ablation.AblationConfig().fraction,
                        help="share of heads ablated, lowest CMR distance first (default: %(default)s, the paper's)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward pass")
    parser.add_argument("--crp-grid", type=Path, default=DEFAULT_GRID_PATH, help="CMR CRP grid (default: shipped)")
    parser.add_argument("--scores-dir", type=Path, default=Path("saved_scores"))
    parser.add_argument("--figs-dir", type=Path, default=Path("figs"))
    parser.add_argument("--ablation-dir", type=Path, default=Path("saved_ablation"))
    parser.add_argument("--bos", action=argparse.BooleanOptionalAction, default=None,
                        help="BOS token on head-score and ICL prompts (--bos) or not (--no-bos); default: the "
                             "tokenizer's own BOS token when it defines one")
    parser.add_argument("--restart", action="store_true", help="redo the ablation instead of resuming it")
    parser.add_argument("--resume", action="store_true",
                        help="resume an interrupted ablation (the default; accepted for uniformity)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def icl_positions(n_ctx: int) -> tuple:
    """(seq_len, late_index): the paper's 512 / 500 when the context allows, else n_ctx / n_ctx - margin."""
    paper_len = TextDataConfig().seq_len
    paper = ICLScoreConfig()
    if n_ctx >= paper_len:
        return paper_len, paper.late_index
    if n_ctx - LATE_INDEX_MARGIN <= paper.early_index:
        raise InputError(f"the model's context of {n_ctx} tokens is too short for an ICL score "
                         f"(needs more than {paper.early_index + LATE_INDEX_MARGIN})")
    return n_ctx, n_ctx - LATE_INDEX_MARGIN


def model_context(model_arg: str) -> int:
    """The context length from a local folder's config.json, else the paper's 512 (checked at load time)."""
    config = Path(model_arg) / "config.json"
    if config.is_file():
        fields = load_json(config)
        for key in ("n_positions", "max_position_embeddings", "n_ctx"):
            if isinstance(fields, dict) and isinstance(fields.get(key), int):
                return int(fields[key])
    return TextDataConfig().seq_len


def write_held_out_jsonl(folder: Path, seq_len: int) -> Path:
    """The bundled model's held-out stdlib files, cut at blank lines, as JSONL for ``ablation.py --data``."""
    from icl_cmr.interventions.texts import split_at_blank_lines
    from icl_cmr.toy_lm.corpus import held_out_texts

    path = folder / "stdlib_held_out.jsonl"
    documents = held_out_texts()
    lines = [json.dumps({"text": piece, "source": name}) for name, text in documents
             for piece in split_at_blank_lines(text, CHARS_PER_TOKEN_MARGIN * seq_len)]
    save_text(path, "\n".join(lines) + "\n")
    logger.info("held-out ICL text: %d pieces of %d standard-library files", len(lines), len(documents))
    return path


def summary_text(fit_table, stats_rows: List[dict], threshold: float) -> str:
    """The printed summary: top CMR-like heads, then ICL scores with p-values."""
    top = fit_table.sort_values("cmr_distance", kind="stable").head(N_SUMMARY_HEADS)
    n_like = int((fit_table["cmr_distance"] < threshold).sum())
    lines = [f"CMR-like heads (D < {threshold}): {n_like} of {len(fit_table)}", "",
             f"{'head':>6} {'D':>8} {'beta_enc':>8} {'beta_rec':>8} {'gamma_ft':>8} {'1/tau':>7} "
             f"{'matching':>8} {'copying':>8}"]
    for row in top.itertuples():
        lines.append(f"{row.label:>6} {row.cmr_distance:8.4f} {row.beta_enc:8.2f} {row.beta_rec:8.2f} "
                     f"{row.gamma_ft:8.2f} {row.inverse_temperature:7.1f} {row.matching_score:8.3f} "
                     f"{row.copying_score:8.3f}")
    lines += ["", f"{'ICL score':<34} {'mean a':>8} {'mean b':>8} {'t':>8} {'p (t)':>9} {'p (Wilcoxon)':>12}"]
    for row in stats_rows:
        lines.append(f"{row['a'] + ' vs ' + row['b']:<34} {row['mean_a']:8.3f} {row['mean_b']:8.3f} "
                     f"{row['t']:8.2f} {row['p_t']:9.2g} {row['p_wilcoxon']:12.2g}")
    return "\n".join(lines)


class Plan:
    """The three steps' arguments, each checked by its own script before any step runs."""

    def __init__(self, args: argparse.Namespace, spec, scratch: Path):
        self.spec = spec
        common = ((["--device", args.device] if args.device else []) + (["--no-progress"] if args.no_progress else [])
                  + ([] if args.bos is None else ["--bos" if args.bos else "--no-bos"]))
        self.scores_file = args.scores_dir / spec.name / f"all_scores_{spec.name}.pkl"
        self.scores_argv = ["--model", args.model, "--out", str(self.scores_file), *common]
        self.fit_argv = ["--all_head_scores", str(self.scores_file), "--save_dir", spec.name,
                         "--crp-grid", str(args.crp_grid), "--figs-dir", str(args.figs_dir),
                         "--fits-dir", str(args.scores_dir), *(["--no-progress"] if args.no_progress else [])]
        self.fit_file, self.fit_table_file = fit_result_paths(args.scores_dir, spec.name)
        seq_len, late_index = icl_positions(model_context(args.model))
        data, self.data_description = args.data, None
        if data is None and Path(args.model).resolve() == BUNDLED_MODEL.resolve():
            data = write_held_out_jsonl(scratch, seq_len)
            self.data_description = (f"held-out standard-library files of {portable_path(BUNDLED_MODEL)} "
                                     "(icl_cmr.toy_lm.lm.held_out_texts), cut at blank lines")
        self.ablation_argv = ["--model_name", args.model, "--fit-file", str(self.fit_file),
                              "--n-eval", str(args.n_eval), "--fraction", str(args.fraction),
                              "--batch-size", str(args.batch_size), "--seq-len", str(seq_len),
                              "--late-index", str(late_index), "--out-dir", str(args.ablation_dir),
                              "--figs-dir", str(args.figs_dir),
                              *(["--data", str(data)] if data is not None else []),
                              *(["--restart"] if args.restart else []), *common]
        self.ablation_file = args.ablation_dir / f"ablation_experiment_{spec.name}.pkl"
        name = glob.escape(spec.name)
        self.outputs = [args.scores_dir / spec.name / f"all_scores_{name}.pkl", self.fit_file, self.fit_table_file,
                        args.figs_dir / "fit_attn_score" / spec.name / "*.pdf",
                        args.ablation_dir / f"ablation_experiment_{name}*",
                        args.figs_dir / "ablation" / f"ablation_experiment_{name}_*.pdf"]

    def check(self) -> None:
        """Every step's arguments, inputs and output folders (item 10 of issue 17: before any work)."""
        compute_head_scores.parse_args(self.scores_argv)
        check_writable_dir(self.scores_file.parent, "--scores-dir")
        fit_args = fit_attn_score.build_parser().parse_args(self.fit_argv)
        load_grid(fit_args)
        check_writable_dir(fit_args.figs_dir / "fit_attn_score" / self.spec.name, "--figs-dir")
        self.ablation_args = ablation.build_parser().parse_args(self.ablation_argv)
        self.ablation_args.data_description = self.data_description
        # also whether C4 can be streamed when step 3 needs it, and a saved partial run's settings
        self.ablation_checked = ablation.check_arguments(self.ablation_args, fit_file_pending=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import pandas as pd

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, progress=not args.no_progress)
    if args.restart and args.resume:
        raise InputError("give --restart (redo the ablation) or --resume (the default), not both")
    started = time.monotonic()
    spec = resolve_model(args.model)
    pin_cpu_kernels()
    # The steps' "wrote X" lines are held back: the guard may then keep the earlier X (same result), and
    # the lines below say what was really written.
    held, step_loggers = HoldWrittenLines(), (compute_head_scores.logger, fit_attn_score.logger, ablation.logger)
    with tempfile.TemporaryDirectory(prefix="icl_cmr_data_") as scratch:
        plan = Plan(args, spec, Path(scratch))
        with flag_errors(parser):
            plan.check()
        plan.ablation_args.print_table = False  # the summary below prints the statistics once
        for step_logger in step_loggers:
            step_logger.addFilter(held)
        try:
            with OutputGuard(plan.outputs) as guard:
                logger.info("[1/3] head scores of %s", spec.name)
                compute_head_scores.main(plan.scores_argv)
                logger.info("[2/3] CMR fits with %s", args.crp_grid)
                fit_attn_score.main(plan.fit_argv)
                logger.info("[3/3] ablation of the top CMR-like heads")
                ablation.run(plan.ablation_args, plan.ablation_checked)
        finally:
            for step_logger in step_loggers:
                step_logger.removeFilter(held)
    for verb, paths in (("updated", guard.changed), ("new", guard.created)):
        if paths:
            logger.info("%s: %s", verb, ", ".join(map(str, paths)))
    logger.info("outputs: %d unchanged, %d updated, %d new", len(guard.unchanged), len(guard.changed),
                len(guard.created))

    fit_table = pd.read_csv(plan.fit_table_file)
    result = read_ablation_result(plan.ablation_file)
    print()
    print(summary_text(fit_table, result["stats"], CMR_LIKE_THRESHOLD))
    logger.info("pipeline finished in %.0f s; figures in %s", time.monotonic() - started, args.figs_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
