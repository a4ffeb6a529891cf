"""Per-token loss and the ICL score: loss index convention, batching, validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from icl_cmr.errors import InputError
from icl_cmr.interventions.icl_score import ICLScoreConfig, icl_scores, per_token_loss, token_losses
from icl_cmr.heads.models import load_model
from icl_cmr.heads.registry import resolve_model


def test_uniform_logits_give_log_vocab_loss_everywhere():
    vocab = 7
    logits = torch.zeros(2, 5, vocab)
    tokens = torch.randint(0, vocab, (2, 5))
    np.testing.assert_allclose(per_token_loss(logits, tokens).numpy(), np.full((2, 4), np.log(vocab)), rtol=1e-6)


def test_loss_index_i_scores_the_prediction_of_token_i_plus_1():
    # logits at position i put weight w on token (i + 1); tokens are 0, 1, 2, 3: every prediction is "right"
    vocab, weight = 4, 3.0
    logits = torch.zeros(1, 4, vocab)
    for position in range(3):
        logits[0, position, position + 1] = weight
    tokens = torch.tensor([[0, 1, 2, 3]])
    expected = -(weight - np.log(np.exp(weight) + vocab - 1))  # -log softmax at the boosted entry
    np.testing.assert_allclose(per_token_loss(logits, tokens).numpy(), np.full((1, 3), expected), rtol=1e-6)


def test_token_losses_of_a_model_match_an_independent_cross_entropy(tiny_model_dirs):
    model = load_model(resolve_model(str(tiny_model_dirs["gpt2"])))
    tokens = torch.randint(1, 250, (3, 20), generator=torch.Generator().manual_seed(0))
    losses = token_losses(model, tokens, batch_size=2)
    with torch.inference_mode():
        logits = model(tokens).double().numpy()
    expected = np.empty((3, 19))
    for b in range(3):  # slow reference: log-sum-exp written out per position
        for i in range(19):
            row = logits[b, i]
            expected[b, i] = np.log(np.exp(row - row.max()).sum()) + row.max() - row[tokens[b, i + 1]]
    np.testing.assert_allclose(losses, expected, atol=1e-4)
    np.testing.assert_allclose(token_losses(model, tokens, batch_size=1), losses, atol=1e-5)


def test_icl_score_is_late_minus_early_loss():
    losses = np.zeros((2, 10))
    losses[:, 8] = [1.0, 0.5]
    losses[:, 2] = [3.0, 0.25]
    np.testing.assert_allclose(icl_scores(losses, ICLScoreConfig(late_index=8, early_index=2)), [-2.0, 0.25])


def test_paper_defaults_need_a_512_token_context():
    config = ICLScoreConfig()
    assert (config.late_index, config.early_index) == (500, 50)
    config.validate(512, n_ctx=1024)
    with pytest.raises(InputError, match="exceeds the model's context of 256"):
        config.validate(512, n_ctx=256)
    with pytest.raises(InputError, match="beyond the last loss index 254"):
        config.validate(256, n_ctx=256)
    ICLScoreConfig(late_index=246, early_index=50).validate(256, n_ctx=256)
    with pytest.raises(InputError, match="below --late-index"):
        ICLScoreConfig(late_index=50, early_index=50).validate(256)
