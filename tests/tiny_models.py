"""Tiny Hugging Face models built from a config and saved locally, for offline tests.

GPT-2, GPT-NeoX (Pythia) and a Llama-style model with grouped-query attention,
each with a small byte-level BPE tokenizer, saved with ``save_pretrained`` so they
load through exactly the same ``TransformerBridge.boot_transformers`` path as hub models.
"""
from __future__ import annotations

from pathlib import Path

ARCHITECTURES = ("gpt2", "neox", "llama_gqa")

#: The per-architecture matrix (issue: "correct on every architecture"): each loads through
#: TransformerLens 4's bridge; ``gpt_neo`` computes attention outside transformers'
#: AttentionInterface and must be refused by the head-score tools.
MATRIX_ARCHITECTURES = ("gpt2", "neox", "llama_gqa", "mistral", "qwen2", "gemma", "gemma2", "gptj", "opt", "phi",
                        "stablelm", "qwen3", "bloom", "falcon", "gpt_neo")
#: Architectures whose hooks cannot be made to hold the pre-softmax scores.
REFUSED_ARCHITECTURES = ("gpt_neo",)

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


def tiny_config(arch: str, vocab: int, n_layers: int = N_LAYERS, d_model: int = D_MODEL):
    """A transformers config of ``arch`` at test size (4 query heads; 2 kv heads where grouped)."""
    import transformers as tf

    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0)
    rotary = dict(num_hidden_layers=n_layers, num_attention_heads=N_HEADS, hidden_size=d_model,
                  intermediate_size=4 * d_model, max_position_embeddings=N_CTX)
    d_head = d_model // N_HEADS
    configs = {
        "gpt2": lambda: tf.GPT2Config(n_layer=n_layers, n_head=N_HEADS, n_embd=d_model, n_positions=N_CTX, **common),
        # Pythia's partial rotary: a quarter of each head's dimensions rotate.
        "neox": lambda: tf.GPTNeoXConfig(rotary_pct=0.25, **rotary, **common),
        "llama_gqa": lambda: tf.LlamaConfig(num_key_value_heads=N_KV_HEADS, **rotary, **common),
        "mistral": lambda: tf.MistralConfig(num_key_value_heads=N_KV_HEADS, sliding_window=None, **rotary, **common),
        "qwen2": lambda: tf.Qwen2Config(num_key_value_heads=N_KV_HEADS, **rotary, **common),
        "gemma": lambda: tf.GemmaConfig(num_key_value_heads=1, head_dim=d_head, **rotary, **common),
        # Attention and final-logit soft-capping, alternating sliding-window layers (window > test prompts).
        "gemma2": lambda: tf.Gemma2Config(num_key_value_heads=N_KV_HEADS, head_dim=d_head, sliding_window=N_CTX,
                                          query_pre_attn_scalar=d_head, **rotary, **common),
        "gptj": lambda: tf.GPTJConfig(n_layer=n_layers, n_head=N_HEADS, n_embd=d_model, n_positions=N_CTX,
                                      rotary_dim=d_head // 2, **common),
        "opt": lambda: tf.OPTConfig(num_hidden_layers=n_layers, num_attention_heads=N_HEADS, hidden_size=d_model,
                                    ffn_dim=4 * d_model, max_position_embeddings=N_CTX, word_embed_proj_dim=d_model,
                                    pad_token_id=1, **common),
        "phi": lambda: tf.PhiConfig(partial_rotary_factor=0.5, **rotary, **common),
        "stablelm": lambda: tf.StableLmConfig(num_key_value_heads=N_HEADS, **rotary, **common),
        "qwen3": lambda: tf.Qwen3Config(num_key_value_heads=N_KV_HEADS, head_dim=d_head, **rotary, **common),
        # ALiBi position bias.
        "bloom": lambda: tf.BloomConfig(n_layer=n_layers, n_head=N_HEADS, hidden_size=d_model, **common),
        # Multi-query attention (one kv head), rotary.
        "falcon": lambda: tf.FalconConfig(num_hidden_layers=n_layers, num_attention_heads=N_HEADS, hidden_size=d_model,
                                          new_decoder_architecture=False, multi_query=True, alibi=False, **common),
        "gpt_neo": lambda: tf.GPTNeoConfig(num_layers=n_layers, num_heads=N_HEADS, hidden_size=d_model,
                                           max_position_embeddings=N_CTX,
                                           attention_types=[[["global", "local"], max(1, n_layers // 2)]],
                                           window_size=N_CTX, **common),
    }
    if arch not in configs:
        raise ValueError(f"unknown architecture {arch!r}; accepted: {MATRIX_ARCHITECTURES}")
    return configs[arch]()


def make_tiny_model_dir(arch: str, directory: Path, seed: int = 0, n_layers: int = N_LAYERS,
                        d_model: int = D_MODEL, random_norms: bool = False) -> Path:
    """Build a randomly initialised tiny model of ``arch`` and save it (with tokenizer) to ``directory``.

    ``random_norms`` draws every 1-d parameter (norm gains and biases, other biases) from
    N(1, 0.5^2), so that tests of LayerNorm folding see gains other than 1.
    """
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer), n_layers, d_model))
    if random_norms:
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.ndim == 1:
                    parameter.copy_(1.0 + 0.5 * torch.randn_like(parameter))
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
