"""Scoring, mean-ablation reference, the pattern-ICL experiment (from Python) and the pattern_icl.py script,
on tiny offline models. The paired tests of the results are specified in test_stats.py."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

import pattern_icl
from icl_cmr.cli.args import run_cli
from icl_cmr.errors import InputError
from icl_cmr.experiments.pattern_icl import PatternIclSettings, check_pattern_icl, check_settings, run_pattern_icl
from icl_cmr.figures.patterns import plot_accuracy_bars
from icl_cmr.files.reading import load_json
from icl_cmr.files.writing import save_pickle
from icl_cmr.heads.hooks import hook_name
from icl_cmr.heads.models import choose_bos, load_model
from icl_cmr.heads.registry import resolve_model
from icl_cmr.interventions.head_ablation import mean_ablation_hooks
from icl_cmr.interventions.pattern_eval import (EncodedPrompt, accuracy_with_ci, encode_prompts,
                                                label_log_likelihoods, reference_means, score_choices,
                                                select_top_heads)
from icl_cmr.interventions.pattern_tasks import PatternTaskConfig, generate_prompts


@pytest.fixture(scope="module")
def gpt2(tiny_model_dirs):
    return load_model(resolve_model(str(tiny_model_dirs["gpt2"])))


def slow_log_likelihood(model, prompt_ids, continuation_ids, hooks=()):
    """Reference: one unbatched forward of prompt + continuation, log-probs summed by hand."""
    tokens = torch.as_tensor(np.concatenate([prompt_ids, continuation_ids]))[None]
    with torch.inference_mode():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))[0].double()
    total = 0.0
    for offset, token in enumerate(continuation_ids):
        position = len(prompt_ids) - 1 + offset
        total += (logits[position, token] - torch.logsumexp(logits[position], 0)).item()
    return total


@pytest.mark.slow
def test_batched_label_scores_equal_unbatched_reference(gpt2):
    prompts = generate_prompts("category_pairs_4way_a", PatternTaskConfig(n_items=3, demo_seeds=(0,)))
    encoded = encode_prompts(gpt2.tokenizer, prompts, choose_bos(gpt2).token_id)
    assert all(len(c) > 1 for c in encoded[0].continuation_ids)  # the tiny tokenizer splits " Foo"
    batched = label_log_likelihoods(gpt2, encoded, batch_size=5)
    expected = [[slow_log_likelihood(gpt2, e.prompt_ids, c) for c in e.continuation_ids] for e in encoded]
    np.testing.assert_allclose(batched, expected, rtol=1e-5, atol=1e-4)


def test_single_token_labels_are_read_from_one_forward_pass(gpt2):
    # Hand-built prompts with one-token labels take the one-run-per-prompt path.
    rng = np.random.default_rng(0)
    encoded = [EncodedPrompt(prompt_ids=np.r_[0, rng.integers(1, 200, n)], prompt_kinds=(None,) * (n + 1),
                             continuation_ids=(np.array([33]), np.array([34]), np.array([35])),
                             continuation_kinds=((None,),) * 3, label_index=1) for n in (6, 9, 4)]
    batched = label_log_likelihoods(gpt2, encoded, batch_size=2)
    expected = [[slow_log_likelihood(gpt2, e.prompt_ids, c) for c in e.continuation_ids] for e in encoded]
    np.testing.assert_allclose(batched, expected, rtol=1e-5, atol=1e-4)


def test_score_choices_picks_the_highest_log_likelihood():
    ll = np.array([[-1.0, -2.0], [-3.0, -0.5], [-1.0, -1.5]])
    predicted, correct, margin = score_choices(ll, np.array([0, 0, 1]))
    np.testing.assert_array_equal(predicted, [0, 1, 0])
    np.testing.assert_array_equal(correct, [True, False, False])
    np.testing.assert_allclose(margin, [1.0, -2.5, -0.5])


def test_wilson_interval_matches_its_closed_form():
    correct = np.array([True] * 7 + [False] * 13)
    k, n, z = 7, 20, 1.959963984540054
    centre = (k + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4)
    accuracy, low, high = accuracy_with_ci(correct)
    assert accuracy == 0.35
    assert low == pytest.approx(centre - half, abs=1e-9) and high == pytest.approx(centre + half, abs=1e-9)


def test_top_heads_count_rounds_the_percentage_and_skips_nan():
    scores = np.arange(100, dtype=float).reshape(10, 10)
    scores[9, 9] = np.nan
    assert select_top_heads(scores, 3) == [(9, 8), (9, 7), (9, 6)]   # 3% of 100 heads
    assert select_top_heads(scores, 0.2) == [(9, 8)]                 # never fewer than one
    with pytest.raises(InputError, match="percentage"):
        select_top_heads(scores, 0)


def test_mean_ablation_with_the_evaluation_prompt_as_reference_leaves_the_output_unchanged(gpt2):
    prompts = generate_prompts("repetition", PatternTaskConfig(n_items=2, demo_seeds=(0,)))
    encoded = encode_prompts(gpt2.tokenizer, prompts[:1], choose_bos(gpt2).token_id)
    means, _ = reference_means(gpt2, encoded, range(2), len(encoded[0].prompt_ids))
    tokens = torch.as_tensor(encoded[0].prompt_ids)[None]
    hooks = mean_ablation_hooks(gpt2, [(0, 1), (1, 3)], means)
    with torch.inference_mode():
        clean = gpt2(tokens)
        ablated = gpt2.run_with_hooks(tokens, fwd_hooks=hooks)
    torch.testing.assert_close(ablated, clean, rtol=1e-5, atol=1e-5)


def test_mean_ablated_head_output_is_the_average_clean_output(gpt2):
    # Reference = the evaluation prompts (of different lengths): under ablation the head's output at
    # each position is the clean output averaged over the prompts reaching that position; positions
    # past the longest prompt take the average over all non-BOS tokens.
    prompts = generate_prompts("category_pairs_a", PatternTaskConfig(n_items=4, demo_seeds=(0,)))
    encoded = encode_prompts(gpt2.tokenizer, prompts, choose_bos(gpt2).token_id)
    lengths = [len(e.prompt_ids) for e in encoded]
    assert len(set(lengths)) > 1
    layer, head = 1, 2
    z_name = hook_name(layer, "z")
    clean = []
    with torch.inference_mode():
        for e in encoded:
            _, cache = gpt2.run_with_cache(torch.as_tensor(e.prompt_ids)[None], names_filter=z_name)
            clean.append(cache[z_name][0, :, head].double())
    longest = max(lengths)
    expected = torch.stack([torch.stack([z[p] for z in clean if len(z) > p]).mean(0) for p in range(longest)])
    pooled = torch.cat([z[1:] for z in clean]).mean(0)
    means, reference_length = reference_means(gpt2, encoded, [layer], longest + 3, batch_size=3)
    assert reference_length == longest and means[layer].shape[0] == longest + 3
    torch.testing.assert_close(means[layer][:longest, head].double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(means[layer][longest:, head].double(), pooled.expand(3, -1), rtol=1e-5, atol=1e-6)
    captured = []
    hooks = mean_ablation_hooks(gpt2, [(layer, head)], means)
    hooks.append((z_name, lambda z, hook=None: captured.append(z[0, :, head].double().clone())))
    with torch.inference_mode():
        gpt2.run_with_hooks(torch.as_tensor(encoded[0].prompt_ids)[None], fwd_hooks=hooks)
    torch.testing.assert_close(captured[0], expected[:lengths[0]], rtol=1e-5, atol=1e-6)


def _run_script(tmp_path, model_dir, *extra, tasks="repetition,category_pairs_4way_a", n_items=4):
    out, figs = tmp_path / "out", tmp_path / "figs"
    # a prompts file brings its own prompt settings (giving them too is refused)
    making = [] if "--prompts-file" in extra else ["--n-items", str(n_items), "--seeds", "0", "1"]
    argv = ["--model", str(model_dir), "--tasks", tasks, *making, "--n-random-sets", "2", "--n-reference", "6",
            "--out-dir", str(out), "--fig-dir", str(figs), *extra]
    assert pattern_icl.main(argv) == 0
    return out / model_dir.name, figs


@pytest.mark.slow
def test_script_writes_tables_statistics_and_figure(tmp_path, tiny_model_dirs):
    model_dir = tiny_model_dirs["neox"]
    folder, figs = _run_script(tmp_path, model_dir, "--heads", "L1H0,L0H3", "--method", "mean,zero,knockout",
                               n_items=3)
    items = pd.read_csv(folder / "items.csv")
    # 2 tasks x 6 prompts x (intact + 3 methods x (induction + 2 random draws))
    assert len(items) == 2 * 6 * (1 + 3 * 3)
    results = pd.read_csv(folder / "results.csv", keep_default_na=False)
    for (task, method, ablate), group in items[items["draw"] < 1].groupby(["task", "method", "ablate"]):
        row = results[(results.task == task) & (results.method == method) & (results.ablate == ablate)
                      & (results.draw.isin(["", "0"]))]
        assert row["accuracy"].iloc[0] == pytest.approx(group["correct"].mean())
    pooled = results[results.draw == "pooled"]
    assert set(pooled["n"]) == {12}  # 6 prompts x 2 draws
    assert set(results["chance"]) == {0.5, 0.25}
    stats = pd.read_csv(folder / "stats.csv")
    assert set(stats["comparison"]) == {"intact - induction", "intact - random", "random - induction"}
    assert stats["permutation_p"].between(0, 1).all()
    assert (stats["permutation_q_bh"] >= stats["permutation_p"] - 1e-12).all()
    assert (stats["permutation_q_bh"] <= 1).all()
    heads = load_json(folder / "heads.json")
    assert heads["heads"]["induction"] == "L1H0,L0H3"
    for draw in heads["heads"]["random"]:  # layer-matched, never the ablated heads
        assert sorted(h[:2] for h in draw.split(",")) == ["L0", "L1"] and "L1H0" not in draw and "L0H3" not in draw
    # interventions reach the scores; intact scores do not depend on which run they came from
    intact = items[items.method == "none"]["ll_Foo"].to_numpy()
    knocked = items[(items.method == "knockout") & (items.ablate == "induction")]["ll_Foo"].to_numpy()
    assert not np.allclose(intact, knocked)
    assert (figs / f"{model_dir.name}_accuracy.pdf").stat().st_size > 0
    meta = load_json(folder / "metadata.json")
    assert meta["mean_reference"]["repetition"]["reference_prompts"] == 6


@pytest.mark.slow
def test_script_picks_top_heads_from_a_scores_file_and_reuses_saved_prompts(tmp_path, tiny_model_dirs):
    model_dir = tiny_model_dirs["gpt2"]
    scores = np.zeros((2, 4))
    scores[1, 2], scores[0, 1] = 0.9, 0.5
    save_pickle(tmp_path / "scores.pkl", {"prefix_matching_score": torch.as_tensor(scores)})
    folder, _ = _run_script(tmp_path, model_dir, "--scores-file", str(tmp_path / "scores.pkl"),
                            "--percentage", "25", "--method", "knockout", "--ablate", "none,induction")
    assert load_json(folder / "heads.json")["top25%"]["induction"] == "L1H2,L0H1"  # 25% of 8 heads
    first = pd.read_csv(folder / "items.csv")
    again, _ = _run_script(tmp_path / "again", model_dir, "--prompts-file", str(folder / "prompts.json"),
                           "--ablate", "none")
    second = pd.read_csv(again / "items.csv")
    np.testing.assert_allclose(second["ll_Foo"], first[first.method == "none"]["ll_Foo"], rtol=1e-6)


@pytest.mark.slow
def test_script_bad_input_is_one_line_and_exit_code_2(tmp_path, tiny_model_dirs, capsys):
    model = str(tiny_model_dirs["gpt2"])
    assert run_cli(pattern_icl.main, ["--model", model, "--tasks", "repetitions"]) == 2
    assert "accepted: repetition" in capsys.readouterr().err
    assert run_cli(pattern_icl.main, ["--model", model, "--method", "mean", "--scores-dir", str(tmp_path)]) == 2
    assert "no head-score file" in capsys.readouterr().err
    assert run_cli(pattern_icl.main, ["--model", model, "--heads", "L7H0", "--out-dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


class SlowTokenizer:
    """Wraps a fast tokenizer but, like Python tokenizers, refuses to give character offsets."""

    def __init__(self, fast):
        self.fast = fast

    def __call__(self, text, **kwargs):
        if kwargs.get("return_offsets_mapping"):
            raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers")
        return self.fast(text, **kwargs)

    def decode(self, ids):
        return self.fast.decode(ids)


def test_tokenizers_without_offsets_get_the_same_kinds_by_decoding(gpt2):
    prompts = generate_prompts("category_pairs_b", PatternTaskConfig(n_items=2, demo_seeds=(0,)))
    fast = encode_prompts(gpt2.tokenizer, prompts, 0)
    slow = encode_prompts(SlowTokenizer(gpt2.tokenizer), prompts, 0)
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a.prompt_ids, b.prompt_ids)
        assert a.prompt_kinds == b.prompt_kinds and a.continuation_kinds == b.continuation_kinds


@pytest.mark.slow
def test_script_runs_on_the_bundled_model_when_present(tmp_path, repo_root):
    bundled = repo_root / "saved_models" / "toy_lm"
    if not (bundled / "config.json").is_file():
        pytest.skip(f"bundled model not found at {bundled} (train it with src/train_toy_lm.py)")
    folder, _ = _run_script(tmp_path, bundled, "--heads", "L1H0", "--method", "mean,knockout",
                            "--ablate", "none,induction", tasks="recursion", n_items=2)
    results = pd.read_csv(folder / "results.csv")
    assert results["accuracy"].between(0, 1).all() and len(results) > 0


@pytest.mark.slow
def test_random_controls_that_could_only_repeat_are_run_and_counted_once(tmp_path, tiny_model_dirs, capsys):
    # 2 layers x 4 heads, ablating L1H3 and L1H0: the only layer-matched set is L1H1,L1H2 (issue 17).
    folder, _ = _run_script(tmp_path, tiny_model_dirs["gpt2"], "--heads", "L1H3,L1H0", "--method", "zero",
                            "--n-random-sets", "5", tasks="repetition", n_items=4)
    warning = "WARNING: heads: only 1 distinct layer-matched random set(s) of 2 heads exist outside L1H3,L1H0"
    assert warning in capsys.readouterr().err
    assert load_json(folder / "heads.json")["heads"]["random"] == ["L1H1,L1H2"]
    items = pd.read_csv(folder / "items.csv")
    assert set(items[items.ablate == "random"]["draw"]) == {0}
    results = pd.read_csv(folder / "results.csv", keep_default_na=False)
    assert results[results.draw == "pooled"]["n"].tolist() == [8]  # 4 items x 2 seeds, not x 5 draws
    meta = load_json(folder / "metadata.json")
    assert meta["random_sets"]["heads"] == dict(requested=5, distinct=1, possible=1, seeds=[0])


# ----------------------------------------------------------------------------- the experiment from Python

def test_settings_defaults_are_the_command_lines():
    args = pattern_icl.build_parser().parse_args(["--model", "gpt2-small"])
    assert pattern_icl.settings_from_args(args) == PatternIclSettings(model="gpt2-small")
    defaults = PatternIclSettings(model="gpt2-small")  # [CS24]: 5 shots, 3 seeds, top 1% and 3% of heads
    assert (defaults.shots, defaults.seeds, defaults.percentage, defaults.n_items) == (5, (0, 1, 2), (1.0, 3.0), 50)
    assert len(defaults.tasks) == 7 and defaults.ablate == ("none", "induction", "random")
    assert defaults.method == ("mean", "knockout")


@pytest.mark.slow
def test_run_from_python_gives_the_scripts_tables(tmp_path, tiny_model_dirs):
    model_dir = tiny_model_dirs["gpt2"]
    settings = PatternIclSettings(model=str(model_dir), tasks=("repetition", "category_pairs_4way_a"), n_items=4,
                                  seeds=(0, 1), heads="L1H0,L0H3", method=("mean", "knockout"), n_random_sets=2,
                                  n_reference=6)
    run = run_pattern_icl(settings)
    folder, _ = _run_script(tmp_path, model_dir, "--heads", "L1H0,L0H3", "--method", "mean,knockout")
    for name, table in (("items", run.items), ("results", run.results), ("results_by_seed", run.results_by_seed),
                        ("stats", run.stats)):
        assert table.to_csv(index=False) == (folder / f"{name}.csv").read_text(), name
    assert run.heads_json() == load_json(folder / "heads.json")
    saved = load_json(folder / "metadata.json")
    assert {key: value for key, value in saved["parameters"].items()
            if key not in ("out_dir", "fig_dir", "verbose")} == run.parameters
    assert saved["random_sets"] == run.metadata_fields()["random_sets"]
    # 2 tasks x 8 prompts x (intact + 2 methods x (induction + 2 random draws))
    assert len(run.items) == 2 * 8 * (1 + 2 * 3)


@pytest.mark.parametrize("change, parameter, message", [
    (dict(tasks=("repetitions",)), "tasks", "`tasks`: unknown value(s) repetitions; accepted: repetition,"),
    (dict(tasks="repetition"), "tasks", "`tasks` must be a sequence of names"),
    (dict(ablate=()), "ablate", "`ablate` is empty; accepted: none, induction, random"),
    (dict(method=("mean", "mean")), "method", "`method` repeats mean; give each value once"),
    (dict(n_items=1), "n_items", "`n_items` must be >= 2 so both classes are asked"),
    (dict(shots=0), "shots", "`shots` must be a positive integer, got 0"),
    (dict(seeds=(0, 0)), "seeds", "`seeds` must hold at least one value, each once"),
    (dict(percentage=(0.0,)), "percentage", "`percentage` must be in (0, 100]"),
    (dict(reference_corpus="every"), "reference_corpus", "`reference_corpus` must be one of task, eval, all"),
])
def test_check_names_the_setting_it_refuses(tiny_model_dirs, change, parameter, message):
    with pytest.raises(InputError) as caught:
        check_pattern_icl(PatternIclSettings(model=str(tiny_model_dirs["gpt2"]), **change))
    assert message in str(caught.value) and "--" not in str(caught.value)
    assert caught.value.parameters == (parameter,)


def test_check_settings_names_the_model_before_any_input_file_is_read(tiny_model_dirs, tmp_path):
    # the script checks its output folder (named after the model) between the two checks, as it always did
    settings = PatternIclSettings(model=str(tiny_model_dirs["gpt2"]), prompts_file=tmp_path / "missing.json")
    assert check_settings(settings).name == tiny_model_dirs["gpt2"].name
    with pytest.raises(OSError):
        check_pattern_icl(settings)


def test_check_chooses_the_heads_and_prompts_without_loading_the_model(tiny_model_dirs, monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge

    monkeypatch.setattr(TransformerBridge, "boot_transformers",
                        lambda *args, **kwargs: pytest.fail("the model was loaded by the check"))
    plan = check_pattern_icl(PatternIclSettings(model=str(tiny_model_dirs["gpt2"]), tasks=("repetition",),
                                                n_items=2, seeds=(0,), heads="L1H3,L1H0"))
    # 2 layers x 4 heads: the only layer-matched pair outside L1H3 and L1H0 is L1H1, L1H2 (5 draws asked)
    selection = plan.head_sets["heads"]
    assert selection.induction == [(1, 3), (1, 0)] and selection.random == [[(1, 1), (1, 2)]]
    assert selection.random_draws.n_requested == 5 and plan.scores_file is None
    assert len(plan.prompts["repetition"]) == 2 and (plan.shape.n_layers, plan.shape.n_heads) == (2, 4)


def test_accuracy_bars_show_intact_induction_and_pooled_random_per_method():
    rows = []
    for task, chance in (("repetition", 0.5), ("category_pairs_4way_a", 0.25)):
        base = dict(task=task, selection="top1%", ci_low=0.0, ci_high=1.0, chance=chance)
        rows.append({**base, "method": "none", "selection": "none", "ablate": "none", "draw": "", "accuracy": 0.9})
        for method in ("mean", "knockout"):
            rows.append({**base, "method": method, "ablate": "induction", "draw": "", "accuracy": 0.6})
            rows.append({**base, "method": method, "ablate": "random", "draw": "0", "accuracy": 0.1})
            rows.append({**base, "method": method, "ablate": "random", "draw": "pooled", "accuracy": 0.4})
    fig = plot_accuracy_bars(pd.DataFrame(rows), title="tiny")
    try:
        assert [ax.get_title() for ax in fig.axes] == ["tiny - mean ablation", "tiny - knockout ablation"]
        for ax in fig.axes:  # 3 conditions x 2 tasks; the single random draw is not drawn, the pooled one is
            assert sorted(round(bar.get_height(), 6) for bar in ax.patches) == [0.4, 0.4, 0.6, 0.6, 0.9, 0.9]
    finally:
        plt.close(fig)
