"""Tiny Hugging Face models built from a config and saved locally, for offline tests.

GPT-2, GPT-NeoX (Pythia) and a Llama-style model with grouped-query attention,
each with a small byte-level BPE tokenizer, saved with ``save_pretrained`` so they
load through exactly the same ``TransformerBridge.boot_transformers`` path as hub models.
"""
from __future__ import annotations

from pathlib import Path

ARCHITECTURES = ("gpt2", "neox", "llama_gqa")

#: Small sizes that keep every test fast: 2 layers, 4 query heads, d_model 32.
N_LAYERS, N_HEADS, D_MODEL, N_CTX = 2, 4, 32, 256
#: Grouped-query model: 2 key/value heads shared by 4 query heads.
N_KV_HEADS = 2
VOCAB_SIZE = 400
BOS_TOKEN = "<|endoftext|>"

_CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "the quick brown fox jumps over the lazy dog. " * 5,
    "import numpy as np\nx = np.arange(10)\nprint(x.sum())\n",
    "Episodic memory links items to their temporal context; recall follows contiguity. " * 3,
]


def make_tokenizer():
    """A byte-level BPE tokenizer (``PreTrainedTokenizerFast``) with a BOS/EOS token at id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[BOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=BOS_TOKEN,
                                   unk_token=BOS_TOKEN)


def make_tiny_model_dir(arch: str, directory: Path, seed: int = 0) -> Path:
    """Build a randomly initialised tiny model of ``arch`` and save it (with tokenizer) to ``directory``."""
    import torch
    from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                              LlamaConfig, LlamaForCausalLM)

    tokenizer = make_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_layer=N_LAYERS, n_head=N_HEADS, n_embd=D_MODEL,
                                           n_positions=N_CTX, **common))
    elif arch == "neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
                                                 hidden_size=D_MODEL, intermediate_size=4 * D_MODEL,
                                                 max_position_embeddings=N_CTX, **common))
    elif arch == "llama_gqa":
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
                                             num_key_value_heads=N_KV_HEADS, hidden_size=D_MODEL,
                                             intermediate_size=4 * D_MODEL, max_position_embeddings=N_CTX,
                                             **common))
    else:
        raise ValueError(f"unknown architecture {arch!r}; accepted: {ARCHITECTURES}")
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
