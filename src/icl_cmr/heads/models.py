"""Loading Transformer language models through TransformerLens 4.

All models load with ``TransformerBridge.boot_transformers`` from a Hugging Face id
or a local checkpoint folder (GPT-2, GPT-NeoX/Pythia, Llama-style grouped-query
models alike), as :func:`icl_cmr.heads.registry.resolve_model` names them.
When the hub cannot be reached and the model is not in the local cache, loading
fails within seconds with one :class:`~icl_cmr.errors.InputError` line saying how to
pass a local folder instead.

Hook names are data: :func:`icl_cmr.heads.hooks.hook_name` is the only place that spells them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

from icl_cmr.errors import InputError
from icl_cmr.heads.hooks import (describe_exception, prepare_attention_hooks, raised_by_libraries,
                                transformer_lens_version)
from icl_cmr.heads.registry import (ModelSpec, cached_snapshot, check_model_files, hub_reachable,
                                   hub_unreachable_error)

logger = logging.getLogger(__name__)

#: Weight precisions a model can load in.
DTYPES = ("float32", "bfloat16", "float16")


def parse_dtype(dtype: str):
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` as a torch dtype."""
    import torch

    if dtype not in DTYPES:
        raise InputError(f"`dtype` {dtype!r} is not supported; accepted: {', '.join(DTYPES)}", parameters=("dtype",))
    return getattr(torch, dtype)


def load_model(spec: ModelSpec, device: str = "cpu", dtype: str = "float32",
               require_hooks: Sequence[str] = ("attn_scores", "pattern")):
    """Load a model with ``TransformerBridge.boot_transformers``.

    Parameters
    ----------
    spec : ModelSpec
        From :func:`resolve_model`.
    device : str
        ``"cpu"`` or ``"cuda"`` (or ``"cuda:N"``).
    dtype : str
        One of :data:`DTYPES`.
    require_hooks : sequence of {"attn_scores", "pattern", "v", "z"}
        Hooks the caller reads or edits; checked (and repaired where possible) by
        :func:`icl_cmr.heads.hooks.prepare_attention_hooks` on a short probe input.

    Returns
    -------
    transformer_lens.model_bridge.TransformerBridge
        In evaluation mode (callers wrap forward passes in ``torch.inference_mode()``),
        with each layer's attention pattern released after its forward.

    Raises
    ------
    InputError
        Hub unreachable and the model not cached; CUDA asked for but absent; an
        architecture whose required hooks cannot hold what their names say.
    CorruptFileError
        A config, tokenizer or weight file of the folder cut short or damaged (named, in one line).
    """
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    torch_dtype = parse_dtype(dtype)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("`device` cuda asked for, but no CUDA GPU is available; use `device` cpu",
                         parameters=("device",))
    source = spec.source
    kwargs = {}
    if not spec.is_local:
        if not hub_reachable():
            cached = cached_snapshot(spec)
            if cached is None:
                raise hub_unreachable_error(spec)
            logger.info("hub unreachable; loading %s from the local cache %s", spec.source, cached)
            source = cached
        elif spec.checkpoint_step is not None:
            kwargs["checkpoint_value"] = spec.checkpoint_step
        if spec.trust_remote_code:
            kwargs["trust_remote_code"] = True
    if spec.is_local or source != spec.source:
        check_model_files(source)  # a file cut short is named here, before transformers fails inside it
    logger.info("loading %s (%s, %s)", source, device, dtype)
    try:
        model = TransformerBridge.boot_transformers(source, device=device, dtype=torch_dtype, **kwargs)
    except OSError as err:
        raise InputError(f"cannot load {spec.source}: {(str(err).splitlines() or [type(err).__name__])[0]}") from None
    except Exception as err:  # an adapter that cannot map this configuration (AssertionError, RuntimeError, ...)
        if isinstance(err, (InputError, MemoryError)) or not raised_by_libraries(err):
            raise
        raise InputError(f"{spec.source} ({model_type_of(source)}) cannot be loaded by TransformerLens "
                         f"{transformer_lens_version()}: {describe_exception(err)}") from err
    model.eval()

    prepare_attention_hooks(model, require=require_hooks)
    return model


def model_type_of(source: str) -> str:
    """The ``model_type`` of a model's config (``gpt2``, ``llama``, ...), for messages; ``"?"`` when unreadable."""
    from transformers import AutoConfig  # heavy (seconds to import): only an error message needs it

    try:
        return str(AutoConfig.from_pretrained(source).model_type)
    except Exception:  # only a message depends on it
        return "?"


def n_kv_heads(model) -> int:
    """Number of key/value heads (== query heads except for grouped-query models)."""
    value = getattr(model.cfg, "n_key_value_heads", None)
    return int(value) if value else int(model.cfg.n_heads)


def peak_gpu_memory_gib(device: str) -> Optional[float]:
    """Peak memory torch allocated on a CUDA ``device`` since the process started (GiB), or None off CUDA."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def has_tokenizer(model) -> bool:
    """Whether the model came with real tokenizer files.

    A folder written by ``save_pretrained`` of a model alone gets a placeholder from
    transformers: a tokenizer with an empty vocabulary and one added special token.
    """
    tokenizer = getattr(model, "tokenizer", None)
    return tokenizer is not None and int(getattr(tokenizer, "vocab_size", 0) or 0) > 0


@dataclass(frozen=True)
class BosChoice:
    """Whether prompts start with a BOS token, which one, and why (recorded in metadata).

    Attributes
    ----------
    token_id : int or None
        Prepended to every prompt; None: no BOS.
    rule : str
        ``"tokenizer"`` (the tokenizer's own BOS token), ``"model config"`` (no tokenizer
        files: the config's ``bos_token_id``), ``"none defined"``, ``"--bos"`` or ``"--no-bos"``.
    """

    token_id: Optional[int]
    rule: str

    @property
    def prepended(self) -> bool:
        return self.token_id is not None

    def describe(self) -> dict:
        """Metadata entry: ``{"prepended", "token_id", "rule"}``."""
        return {"prepended": self.prepended, "token_id": self.token_id, "rule": self.rule}


def own_bos_token_id(model, trust_remote_code: bool = False) -> Optional[int]:
    """The BOS id the model's tokenizer defines itself, or None when it defines none.

    TransformerLens 4 fills a missing BOS with the EOS token (Qwen2: ``<|endoftext|>``),
    which ``tokenizer("text")`` never adds and the model never saw before a text; so
    the tokenizer is read again from its own files here. Without tokenizer files the
    model config's ``bos_token_id`` is used when it lies inside the vocabulary.
    ``trust_remote_code`` as the model was loaded (:attr:`ModelSpec.trust_remote_code`).
    """
    tokenizer = getattr(model, "tokenizer", None)
    vocab = int(model.cfg.d_vocab)
    if not has_tokenizer(model):
        config = getattr(getattr(model, "original_model", None), "config", None)
        token_id = getattr(config, "bos_token_id", None)
        return int(token_id) if isinstance(token_id, int) and 0 <= token_id < vocab else None
    from transformers import AutoTokenizer

    source = getattr(tokenizer, "name_or_path", None)
    try:
        fresh = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code) if source else None
    except (OSError, ValueError) as err:
        logger.warning("could not re-read the tokenizer of %s (%s); using the loaded tokenizer's BOS",
                       source, str(err).splitlines()[0] if str(err) else type(err).__name__)
        fresh = tokenizer
    token_id = getattr(fresh, "bos_token_id", None) if fresh is not None else None
    return int(token_id) if token_id is not None and 0 <= int(token_id) < vocab else None


def choose_bos(model, requested: Optional[bool] = None, trust_remote_code: bool = False) -> BosChoice:
    """The BOS rule for every prompt a script builds (DESIGN.md section 2; README "BOS").

    Parameters
    ----------
    model : TransformerBridge
    requested : bool or None
        ``--bos`` (True), ``--no-bos`` (False) or neither (None: prepend the tokenizer's
        own BOS token when it defines one, as HookedTransformer did for [LI24]'s GPT-2
        and Pythia runs and as Llama/Mistral tokenizers do themselves).
    trust_remote_code : bool
        As the model was loaded (the tokenizer is read again from its files).

    Raises
    ------
    InputError
        ``--bos`` for a tokenizer that defines no BOS token.
    """
    if requested is False:
        return BosChoice(None, "--no-bos")
    token_id = own_bos_token_id(model, trust_remote_code)
    if requested:
        if token_id is None:
            raise InputError("`bos`: the model's tokenizer defines no BOS token (TransformerLens would put its EOS "
                             "token there); drop `bos`", parameters=("bos",))
        return BosChoice(token_id, "--bos")
    if token_id is None:
        return BosChoice(None, "none defined")
    return BosChoice(token_id, "tokenizer" if has_tokenizer(model) else "model config")
