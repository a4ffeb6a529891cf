"""The bundled toy language model (DESIGN.md section 9): a small GPT-2 trained offline on the standard library.

The project ships this model so that every analysis runs on a real trained transformer without
downloading anything. Modules, in the order a training run uses them:

* :mod:`~icl_cmr.toy_lm.config`: :class:`ToyLMConfig`, every hyper-parameter with its source.
* :mod:`~icl_cmr.toy_lm.corpus`: the stdlib ``.py`` files and their train / held-out split
  (:func:`held_out_texts` for evaluating the bundled model).
* :mod:`~icl_cmr.toy_lm.tokenizer`: byte-level BPE, the token stream, the frequent ids.
* :mod:`~icl_cmr.toy_lm.training_rows`: rows that copy a span of their own text later.
* :mod:`~icl_cmr.toy_lm.model`: the GPT-2 with sinusoidal initial position embeddings.
* :mod:`~icl_cmr.toy_lm.scoring`: matching score and ICL score.
* :mod:`~icl_cmr.toy_lm.training`: the learning-rate schedule and the training loop.
* :mod:`~icl_cmr.toy_lm.evaluation`: the final check of a saved model folder.
* :mod:`~icl_cmr.toy_lm.training_run`: the whole run as ``train_toy_lm.py`` makes it (settings in).

The loss-curve figure is :mod:`icl_cmr.figures.toy_lm`. The names a user needs most are importable
from the package itself (``from icl_cmr.toy_lm import held_out_texts``), as they were when the
model was one module.
"""
from icl_cmr.toy_lm.config import ToyLMConfig
from icl_cmr.toy_lm.corpus import held_out_texts
from icl_cmr.toy_lm.training import train

__all__ = ["ToyLMConfig", "held_out_texts", "train"]
