"""Regenerate every figure of [LI24] that published data supports, in one command.

Reads the authors' published outputs (their ``saved_scores/``, ``saved_crps/``, ``saved_ablation/``,
``saved_top_heads/``) and writes under ``figs/paper/`` (``--out-dir``) one PDF per figure panel group,
named after the paper's figure (``fig4_cmr_crps.pdf``, ``fig5_gpt2-small_heads.pdf``,
``fig6b_pythia_sizes.pdf``, ``fig7b-S2_pythia-70m_params_over_training.pdf``, ``fig8_ablation.pdf``,
...), and ``SUMMARY.md``: CMR-like heads per model and per layer band, top-head parameter means,
ablation t statistics, how our Fig 7b / S2 differs from the published one (the authors' script
follows different heads at different checkpoints), and which figures could not be made and why.

Where the data comes from:

* ``--official DIR``: a clone of the authors' repository, or any folder with their layout;
* neither ``--official`` nor ``--ours``: the authors' repository archive is downloaded once
  (``--download-url``, default their commit the figures were checked on) into
  ``~/.cache/icl_cmr/official/`` (``--cache-dir``, or ``$ICL_CMR_CACHE_DIR``); offline, this stops with
  one line saying how to get the data;
* ``--ours``: our own grid (``--crp-grid``), head-score files (``--scores-dir``) and ablation results
  (``--ablation-dir``), so the same figures can be drawn for new models (the bundled model always).

Everything is computed and rendered before the first file is written. A progress bar counts the
figures (``--no-progress`` hides it).

Example::

    python src/paper_figures.py --official ../shared/official
    python src/paper_figures.py --ours
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from icl_cmr.cli.args import OneLineErrorParser, positive_float, run_cli, setup_logging
from icl_cmr.cli.flags import flag_errors
from icl_cmr.config import CMR_GRID_MEAN_FILENAME, CMR_LIKE_STRICT_THRESHOLD, CMR_LIKE_THRESHOLD
from icl_cmr.files.official import AUTHORS_ARCHIVE_URL, default_cache_dir, resolve_official_dir
from icl_cmr.files.outputs import PendingWrites, portable_path
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.experiments.paper_figures import PaperSources, build_paper_figures, check_sources, summary_markdown
from icl_cmr.files.scores import DEFAULT_SCORES_DIR
from icl_cmr.files.grids import read_cmr_grid
from icl_cmr.config import DEFAULT_GRID_PATH

logger = logging.getLogger("paper_figures")

DEFAULT_OUT_DIR = Path("figs") / "paper"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="Every [LI24] figure that published data supports, and SUMMARY.md.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--official", type=Path, default=None,
                        help="folder with the authors' saved_scores/, saved_crps/, saved_ablation/, saved_top_heads/ "
                             "(a clone of their repository); default: download it once into the cache")
    source.add_argument("--ours", action="store_true",
                        help="draw from our grid, head scores and ablation results instead of the authors'")
    parser.add_argument("--download-url", default=AUTHORS_ARCHIVE_URL,
                        help="repository archive (.tar.gz or .zip, http(s) or file://) to download when neither "
                             "--official nor --ours is given (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="download cache root (default: $ICL_CMR_CACHE_DIR or "
                             f"{portable_path(default_cache_dir())})")
    parser.add_argument("--scores-dir", "--scores_dir", type=Path, default=DEFAULT_SCORES_DIR,
                        help="with --ours: our head-score files (default: %(default)s)")
    parser.add_argument("--crp-grid", "--crp_grid", type=Path, default=DEFAULT_GRID_PATH,
                        help="with --ours: our CMR grid (default: %(default)s)")
    parser.add_argument("--ablation-dir", type=Path, default=Path("saved_ablation"),
                        help="with --ours: our ablation results (default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="output folder (default: %(default)s)")
    parser.add_argument("--threshold", type=positive_float, default=CMR_LIKE_THRESHOLD,
                        help="CMR distance below which a head is CMR-like (default: %(default)s, [LI24])")
    parser.add_argument("--strict-threshold", type=positive_float, default=CMR_LIKE_STRICT_THRESHOLD,
                        help="second threshold (default: %(default)s, [LI24] supplement)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def check_flag_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse flags that the chosen source would ignore (one line, exit 2)."""
    ours_only = ("scores_dir", "crp_grid", "ablation_dir")
    download_only = ("download_url", "cache_dir")
    flag = {name: "--" + name.replace("_", "-") for name in ours_only + download_only}
    if not args.ours:
        for name in ours_only:
            if getattr(args, name) != parser.get_default(name):
                parser.error(f"argument {flag[name]}: only with --ours (the authors' data has its own)")
    if args.ours or args.official is not None:
        for name in download_only:
            if getattr(args, name) != parser.get_default(name):
                parser.error(f"argument {flag[name]}: only without --official and --ours (nothing is downloaded)")


def sources(args: argparse.Namespace) -> PaperSources:
    """Where the data comes from (downloads the authors' data when needed)."""
    thresholds = {"threshold": args.threshold, "strict_threshold": args.strict_threshold}
    if args.ours:
        return PaperSources(label=f"our outputs (`{portable_path(args.scores_dir)}`, "
                                  f"`{portable_path(args.ablation_dir)}`)",
                            scores_dir=args.scores_dir, grid=read_cmr_grid(args.crp_grid),
                            ablation_dir=args.ablation_dir, top_heads_dir=None, ours=True, **thresholds)
    data = resolve_official_dir(args.official, args.download_url, args.cache_dir, progress=not args.no_progress)
    return PaperSources(label=f"the authors' published outputs in `{portable_path(data)}`",
                        scores_dir=data / "saved_scores",
                        grid=read_cmr_grid(data / "saved_crps" / CMR_GRID_MEAN_FILENAME),
                        ablation_dir=data / "saved_ablation", top_heads_dir=data / "saved_top_heads", **thresholds)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flag_combinations(parser, args)
    setup_logging(args.verbose)
    if not args.verbose:  # one "reading <file>" line per score file would bury the progress bar
        logging.getLogger("icl_cmr.files.scores").setLevel(logging.WARNING)
    start = time.perf_counter()
    out_dir = check_writable_dir(args.out_dir, "--out-dir")
    with flag_errors(parser):
        src = sources(args)
        check_sources(src)
        result = build_paper_figures(src, progress=not args.no_progress)
    given = sys.argv[1:] if argv is None else argv
    command = "python src/paper_figures.py " + " ".join(shlex.quote(a) for a in given)
    pending = PendingWrites()
    for name, content in result.files.items():
        if isinstance(content, bytes):
            pending.data(out_dir / name, content)
        else:
            pending.figure(out_dir / name, content)
    pending.text(out_dir / "SUMMARY.md", summary_markdown(src, result, command.strip()))
    written = pending.commit()
    logger.info("wrote %d files to %s in %.1f s (%d figure groups drawn, %d not: see SUMMARY.md)", len(written),
                out_dir, time.perf_counter() - start, len(result.sections), len(result.missing))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
