"""Which model: the paper's names and their hub ids, training checkpoints, and a model's shape from its config.

Names used in the paper map to hub ids in :data:`MODEL_REGISTRY`; :func:`resolve_model` turns a
name, a hub id or a local folder into a :class:`ModelSpec`. :func:`read_model_shape` reads layers,
heads, context and vocabulary from the config alone, so every check that depends on the model runs
before its weights load (:func:`icl_cmr.heads.models.load_model`). Nothing here imports torch.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import urlparse

from icl_cmr.errors import CorruptFileError, InputError

logger = logging.getLogger(__name__)


#: Paper names -> Hugging Face ids. [LI24] used GPT-2 small, the deduplicated
#: Pythia v0 suite (70m..12b), Qwen-7B, Mistral-7B and Llama-3-8B (Fig 6).
MODEL_REGISTRY = {
    "gpt2-small": "gpt2",
    **{f"pythia-{size}": f"EleutherAI/pythia-{size}-deduped-v0"
       for size in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")},
    "qwen-7b": "Qwen/Qwen-7B",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "llama3-8b": "meta-llama/Meta-Llama-3-8B",
}


#: Registry names whose hub code needs ``trust_remote_code=True`` (Qwen-7B ships its own modelling code).
REMOTE_CODE_MODELS = frozenset({"qwen-7b"})


#: Seconds to wait for the hub before declaring it unreachable.
HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ModelSpec:
    """What to load and how to name its outputs.

    Attributes
    ----------
    name : str
        The name outputs are filed under (``saved_scores/<name>/``): the registry
        name, a local folder's basename, or a hub id with ``/`` replaced by ``__``.
    source : str
        Hub id or local folder passed to ``boot_transformers``.
    is_local : bool
        Whether ``source`` is a local folder.
    checkpoint_step : int or None
        Training step of a Pythia checkpoint (None: final model).
    checkpoint_index : int or None
        Index of that step in TransformerLens's checkpoint list (the authors'
        ``cp<K>`` file suffix; Pythia v0: step = 1000 (K + 1)).
    trust_remote_code : bool
        Whether the hub model needs its own modelling code.
    """

    name: str
    source: str
    is_local: bool
    checkpoint_step: Optional[int] = None
    checkpoint_index: Optional[int] = None
    trust_remote_code: bool = False


def resolve_model(model: str, checkpoint: Optional[int] = None) -> ModelSpec:
    """Turn a user's model argument into a :class:`ModelSpec`.

    Parameters
    ----------
    model : str
        A registry name (``gpt2-small``, ``pythia-70m``, ...), any Hugging Face id,
        or a local checkpoint folder.
    checkpoint : int, optional
        Training step of a Pythia checkpoint (e.g. 143000 for the final v0 model).

    Returns
    -------
    ModelSpec

    Raises
    ------
    InputError
        If a checkpoint is asked of a local folder or of a model without
        published training checkpoints, or the step is not one of them.
    """
    if not model:
        raise InputError("`model` is empty; give a registry name, a Hugging Face id or a local folder",
                         parameters=("model",))
    local = Path(model).expanduser()
    if local.is_dir():
        if checkpoint is not None:
            raise InputError(f"`checkpoint` applies to hub models with training checkpoints, not the local folder "
                             f"{local}", parameters=("checkpoint",))
        if not (local / "config.json").is_file():
            raise InputError(f"local model folder {local} has no config.json (save it with save_pretrained)")
        return ModelSpec(name=local.resolve().name, source=str(local.resolve()), is_local=True)
    if model.startswith((".", "/", "~")):
        raise InputError(f"local model folder {model} does not exist")
    source = MODEL_REGISTRY.get(model, model)
    name = model.replace("/", "__")
    index = None
    if checkpoint is not None:
        index = checkpoint_index(source, checkpoint)
    return ModelSpec(name=name, source=source, is_local=False, checkpoint_step=checkpoint,
                     checkpoint_index=index, trust_remote_code=model in REMOTE_CODE_MODELS)


def checkpoint_index(source: str, step: int) -> int:
    """Index of training ``step`` in TransformerLens's checkpoint list for hub model ``source``.

    Raises
    ------
    InputError
        If ``source`` has no published checkpoints or ``step`` is not among them.
    """
    from transformer_lens.tools.model_registry.checkpoints import get_checkpoint_labels

    try:
        labels, _ = get_checkpoint_labels(source)
    except ValueError:
        raise InputError(f"model {source} has no published training checkpoints; drop `checkpoint`",
                         parameters=("checkpoint",)) from None
    if step not in labels:
        raise InputError(f"`checkpoint` {step} is not a training step of {source}; "
                         f"available: {labels[0]}, {labels[1]}, ..., {labels[-1]} ({len(labels)} steps)",
                         parameters=("checkpoint",))
    return labels.index(step)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub (``$HF_ENDPOINT``) answers within ``timeout`` s; False when HF_HUB_OFFLINE is set."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def cached_snapshot(spec: ModelSpec) -> Optional[str]:
    """The local cache folder of a hub model (and revision), or None when not cached."""
    from huggingface_hub import snapshot_download

    revision = f"step{spec.checkpoint_step}" if spec.checkpoint_step is not None else None
    try:
        return snapshot_download(spec.source, revision=revision, local_files_only=True)
    except Exception:  # any failure here means "not usable from the cache"
        return None


def hub_unreachable_error(spec: ModelSpec) -> InputError:
    """The one line for a hub model that can be neither downloaded nor found in the local cache."""
    return InputError(
        f"cannot download {spec.source}: the Hugging Face hub is unreachable and the model is not in "
        "the local cache; pass a local checkpoint folder instead (`model` /path/to/dir saved with "
        "save_pretrained)", parameters=("model",))


#: Hugging Face config fields, in TransformerLens 4's order of preference
#: (``transformer_lens.model_bridge.sources._hf_format.map_default_transformer_lens_config``), so that the
#: shape read here is the ``model.cfg`` the bridge builds from the same config.
_LAYER_FIELDS = ("n_layer", "num_hidden_layers", "num_transformer_layers", "num_layers", "n_layers", "n_blocks")


_HEAD_FIELDS = ("n_head", "num_attention_heads", "num_heads", "n_heads")


_KV_HEAD_FIELDS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")


_CONTEXT_FIELDS = ("n_positions", "max_position_embeddings", "max_context_length", "max_length", "seq_length",
                   "max_seq_len", "max_sequence_length")


#: TransformerLens 4's context for configs without a length field (ALiBi models such as BLOOM).
FALLBACK_CONTEXT = 2048


@dataclass(frozen=True)
class ModelShape:
    """What a model's config says about its shape, read without its weights (:func:`read_model_shape`).

    Attributes
    ----------
    n_layers, n_heads : int
        Layers and query heads per layer (the head grid every score, fit and ablation uses).
    n_kv_heads : int
        Key/value heads per layer (< ``n_heads`` for grouped-query models).
    n_ctx : int
        Longest input in tokens, as TransformerLens 4 sets ``cfg.n_ctx`` (``n_positions``,
        ``max_position_embeddings``, ...; 2048 for ALiBi models without such a field).
    vocab_size : int or None
        Rows of the embedding (``cfg.d_vocab``); None when the config does not say.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    n_ctx: int
    vocab_size: Optional[int] = None


def _config_int(config, fields: Sequence[str]) -> Optional[int]:
    """The first of ``fields`` the config defines, as an int (per-layer lists: their maximum, as TransformerLens)."""
    for field in fields:
        try:
            value = getattr(config, field, None)
        except Exception:  # transformers >= 5.15 raises on global reads of per-layer fields
            continue
        if isinstance(value, (list, tuple)) and value:
            value = max(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
    return None


def model_shape_from_config(config, source: str = "the model") -> ModelShape:
    """:class:`ModelShape` of a ``transformers`` config (a multimodal model's text config).

    Raises
    ------
    InputError
        If the config names no layer or head count.
    """
    text = getattr(config, "text_config", None)
    if text is None:
        decoder = getattr(config, "decoder", None)
        text = decoder if decoder is not None and hasattr(decoder, "hidden_size") else config
    n_layers, n_heads = _config_int(text, _LAYER_FIELDS), _config_int(text, _HEAD_FIELDS)
    if n_layers is None or n_heads is None:
        raise InputError(f"the configuration of {source} names no layer or head count "
                         f"(looked for {', '.join(_LAYER_FIELDS[:2])} and {', '.join(_HEAD_FIELDS[:2])})")
    n_kv = _config_int(text, _KV_HEAD_FIELDS)
    if getattr(text, "multi_query", False) and not getattr(text, "new_decoder_architecture", False):
        n_kv = 1  # Falcon-7B: multi-query attention whatever num_kv_heads says (FalconAttention)
    n_ctx = _config_int(text, _CONTEXT_FIELDS)
    return ModelShape(n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv or n_heads,
                      n_ctx=n_ctx if n_ctx is not None else FALLBACK_CONTEXT,
                      vocab_size=_config_int(text, ("vocab_size",)))


def read_model_shape(spec: ModelSpec) -> ModelShape:
    """Read a model's shape from its config alone (``transformers.AutoConfig``; no weights, no tokenizer).

    Scripts call it before :func:`load_model` so that head labels, fit and score files, prompt
    lengths and token ids are checked against the model before minutes go into loading it.

    Parameters
    ----------
    spec : ModelSpec
        From :func:`resolve_model`: a local folder (its ``config.json``) or a hub id (the config
        is fetched, or taken from the local cache when the hub is unreachable).

    Returns
    -------
    ModelShape

    Raises
    ------
    InputError
        Hub unreachable and the model not cached (the same line as :func:`load_model`), or a
        config that cannot be read or names no layer or head count.
    CorruptFileError
        A config, tokenizer or weight file of a local (or cached) folder cut short or damaged
        (:func:`check_model_files`), so a script stops before any work or output.
    """
    from transformers import AutoConfig

    source, kwargs = spec.source, {}
    if not spec.is_local:
        if not hub_reachable():
            cached = cached_snapshot(spec)
            if cached is None:
                raise hub_unreachable_error(spec)
            source = cached
        elif spec.checkpoint_step is not None:
            kwargs["revision"] = f"step{spec.checkpoint_step}"
        if spec.trust_remote_code:
            kwargs["trust_remote_code"] = True
    if spec.is_local or Path(source).is_dir():
        check_model_files(source)
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except Exception as err:  # OSError, ValueError, KeyError, huggingface_hub's strict-dataclass errors, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot read the configuration of {spec.source}: {first}") from None
    return model_shape_from_config(config, spec.source)


# ----------------------------------------------------------------------------- damaged model files

#: JSON files of a saved model folder that transformers reads (config, tokenizer, generation settings).
MODEL_JSON_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "added_tokens.json", "vocab.json", "chat_template.json")

#: What to do about a damaged model file (an interrupted save or copy, a partial download).
_DAMAGED_ADVICE = "save or download the model again"


def _damaged(path: Path, detail: str) -> CorruptFileError:
    return CorruptFileError(path, f"damaged or incomplete ({detail}); {_DAMAGED_ADVICE}")


def _check_json(path: Path) -> None:
    try:
        json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as err:
        raise _damaged(path, f"not valid JSON: {' '.join(str(err).split())}") from None


def _check_safetensors(path: Path) -> None:
    """The safetensors layout: an 8-byte header length, a JSON header, then exactly the tensors it declares.

    Reads the header only (no tensor bytes), so a 16 GB shard costs as little as a small one.
    """
    size = path.stat().st_size
    with open(path, "rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise _damaged(path, f"{size} bytes, shorter than the 8-byte header length")
        header_len = struct.unpack("<Q", prefix)[0]
        if header_len > size - 8:
            raise _damaged(path, f"its header declares {header_len:,} bytes of metadata, the file holds {size:,} bytes")
        try:
            header = json.loads(stream.read(header_len))
        except (UnicodeDecodeError, ValueError):
            raise _damaged(path, "its header is not valid JSON") from None
    try:
        data_end = max((int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"),
                       default=0)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        raise _damaged(path, "its header does not list tensor offsets") from None
    expected = 8 + header_len + data_end
    if size != expected:
        raise _damaged(path, f"its header declares {expected:,} bytes, the file holds {size:,}")


#: The first bytes of a PyTorch file saved before torch 1.6 (a pickled magic number, not a zip archive).
_LEGACY_TORCH_MAGIC = bytes.fromhex("80028a0a6cfc9c46f9206aa85019")


def _check_torch_zip(path: Path) -> None:
    """A ``pytorch_model.bin`` (zip archive since torch 1.6): its directory is present and its records fit."""
    with open(path, "rb") as stream:
        start = stream.read(len(_LEGACY_TORCH_MAGIC))
    if start == _LEGACY_TORCH_MAGIC:
        return  # the pre-1.6 format has no directory to check; torch.load reports its own damage
    try:
        with zipfile.ZipFile(path) as archive:
            directory_start = archive.start_dir
            overrun = [info.filename for info in archive.infolist()
                       if info.header_offset + info.compress_size > directory_start]
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise _damaged(path, f"not a complete PyTorch archive: {err}") from None
    if overrun:
        raise _damaged(path, f"the archive's record {overrun[0]} runs past its data")


def _check_weight_index(path: Path) -> None:
    """A sharded checkpoint's ``*.index.json``: valid, and every shard it names is present."""
    _check_json(path)
    weight_map = json.loads(path.read_bytes()).get("weight_map", {})
    shards = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
    missing = [shard for shard in shards if not (path.parent / str(shard)).is_file()]
    if missing:
        raise _damaged(path, f"{len(missing)} of its {len(shards)} shards missing, e.g. {missing[0]}")


def check_model_files(folder: "str | os.PathLike[str]") -> None:
    """Refuse a saved model folder whose files are cut short or damaged, naming the file, in one line.

    Checks what can be checked without loading anything: the JSON files transformers reads
    (:data:`MODEL_JSON_FILES`, sharded checkpoints' ``*.index.json`` and their shards' presence),
    every ``*.safetensors`` file (its header, and that the file holds exactly the bytes the header
    declares), and every ``*.bin`` checkpoint (its zip directory, and that each record fits). Bytes
    changed in place without changing the length are not detected (no checksums are stored).

    Parameters
    ----------
    folder : path-like
        A folder written by ``save_pretrained`` (or a hub snapshot in the local cache).

    Raises
    ------
    CorruptFileError
        ``<file>: damaged or incomplete (<what is wrong>); save or download the model again``.
    """
    folder = Path(folder)
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        name = path.name
        if name.endswith(".index.json"):
            _check_weight_index(path)
        elif name in MODEL_JSON_FILES:
            _check_json(path)
        elif name.endswith(".safetensors"):
            _check_safetensors(path)
        elif name.endswith(".bin") and name.startswith("pytorch_model"):
            _check_torch_zip(path)
