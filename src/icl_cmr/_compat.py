"""The engine's former flat module paths, kept importable for one release.

Until the layout by family (``icl_cmr.cmr``, ``icl_cmr.heads``, ...) the engine was one flat folder,
and the demo notebook and the docs of that release import from it (``from icl_cmr.fitting import
fit_heads``). :func:`install` puts a finder on ``sys.meta_path`` that answers those old names with a
module whose attributes are looked up, in order, in the modules that hold them now; the first use
of an old path warns (``DeprecationWarning``) and names the new one. Nothing is imported until an
old path is used. The finder and the table go in the release after next.

Three former modules are packages now: ``icl_cmr.cmr`` and ``icl_cmr.toy_lm`` answer the names
users imported from them through their package's face; ``icl_cmr.cli`` is :mod:`icl_cmr.cli.args`.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Dict, Optional, Sequence, Tuple

#: Former module (``icl_cmr.<name>``) -> the modules that hold its names now, searched in order.
FORMER_MODULES: Dict[str, Tuple[str, ...]] = {
    "cmr_kernels": ("cmr.kernels",),
    "cmr_conditional": ("cmr.conditional",),
    "cmr_grid": ("cmr.grid", "experiments.cmr_grid", "files.grids"),
    "human_recall": ("humans.recall",),
    "human_fits": ("humans.fits", "files.grids", "fits.distance", "config"),
    "human_plots": ("figures.humans",),
    "head_scores": ("heads.scores", "heads.results"),
    "copying": ("heads.copying",),
    "prompts": ("heads.prompts",),
    "attention_hooks": ("heads.hooks",),
    "models": ("heads.models", "heads.registry", "heads.hooks"),
    "fitting": ("fits.distance",),
    "layer_stats": ("fits.layers",),
    "fit_analyses": ("fits.analyses", "experiments.fits"),
    "fit_figures": ("figures.fit_sets",),
    "plotting": ("figures.fits", "figures.style"),
    "paper_figures": ("experiments.paper_figures",),
    "official_data": ("files.official",),
    "head_ablation": ("interventions.head_ablation",),
    "attention_knockout": ("interventions.knockout",),
    "icl_score": ("interventions.icl_score",),
    "ablation_experiment": ("interventions.icl_ablation", "experiments.ablation"),
    "ablation_plots": ("figures.ablation",),
    "pattern_tasks": ("interventions.pattern_tasks",),
    "pattern_eval": ("interventions.pattern_eval", "figures.patterns", "stats"),
    "text_data": ("interventions.texts", "files.texts"),
    "induction_task": ("synthetic.task", "figures.synthetic"),
    "tiny_transformer": ("synthetic.transformer",),
    "induction_mamba": ("synthetic.mamba",),
    "selective_scan": ("synthetic.scan",),
    "induction_models": ("synthetic.models", "files.induction_models"),
    "io": ("files.writing", "files.reading", "files.folders"),
    "unpickling": ("files.unpickling",),
    "file_checks": ("files.checks",),
    "score_files": ("files.scores", "files.grids", "heads.results", "config"),
    "score_format": ("files.score_format",),
    "result_files": ("files.results",),
    "outputs": ("files.outputs", "files.folders", "files.resume", "devices"),
    "fit_cli": ("cli.fit_args",),
}


class FormerModule(types.ModuleType):
    """A former module path: each attribute is taken from the first current module that has it."""

    def __init__(self, name: str, targets: Sequence[str]):
        super().__init__(name, f"Former path of {', '.join(targets)} (kept for one release).")
        self.__targets = tuple(targets)

    def __getattr__(self, attribute: str):
        for target in self.__targets:
            try:
                module = importlib.import_module(target)
            except ModuleNotFoundError:
                continue
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attribute!r} (its names now live in "
                             f"{', '.join(self.__targets)})")

    def __dir__(self):
        names = set()
        for target in self.__targets:
            try:
                names.update(dir(importlib.import_module(target)))
            except ModuleNotFoundError:
                continue
        return sorted(names)


class _FormerPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``icl_cmr.<former name>`` when no module of that name exists any more."""

    def __init__(self, package: str):
        self.package = package

    def find_spec(self, fullname: str, path=None, target=None) -> Optional[importlib.machinery.ModuleSpec]:
        prefix = self.package + "."
        if not fullname.startswith(prefix) or fullname[len(prefix):] not in FORMER_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        former = spec.name[len(self.package) + 1:]
        targets = [f"{self.package}.{target}" for target in FORMER_MODULES[former]]
        warnings.warn(f"{spec.name} is now {' and '.join(targets)}; the old path goes in the release after next",
                      DeprecationWarning, stacklevel=3)
        return FormerModule(spec.name, targets)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the attributes are looked up on use."""


def install(package: str = "icl_cmr") -> None:
    """Answer the former module paths of ``package`` (once; a second call changes nothing)."""
    if not any(isinstance(finder, _FormerPaths) and finder.package == package for finder in sys.meta_path):
        sys.meta_path.append(_FormerPaths(package))
