"""Pattern-task generators: the sequences, prompts and files they claim ([CS24]; DESIGN.md section 6)."""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from icl_cmr.errors import InputError
from icl_cmr.interventions.pattern_tasks import (CATEGORY_WORDS, TASKS, PatternTaskConfig, generate_prompts, get_task,
                                                 prompts_from_json, prompts_to_json)

SMALL = PatternTaskConfig(shots=5, n_items=12, demo_seeds=(0, 1, 2), seed=3)

# What each task must contain, written out independently of the generator's templates.
WORD_CLASSES = {
    "category_pairs_a": [("fruit", "animal"), ("furniture", "profession")],
    "category_pairs_b": [("vegetable", "vehicle"), ("body_part", "instrument")],
    "category_pairs_4way_a": [("fruit", "animal"), ("furniture", "profession"), ("vegetable", "vehicle"),
                              ("body_part", "instrument")],
    "category_pairs_4way_b": [("fruit", "vehicle"), ("vegetable", "animal"), ("furniture", "instrument"),
                              ("body_part", "profession")],
}
LABELS = ["Foo", "Bar", "Mur", "Res"]


def letter_class(task: str, sequence):
    """0 if ``sequence`` has the task's pattern, 1 if it is all distinct letters, else None."""
    if not all(re.fullmatch(r"[A-Z]", s) for s in sequence):
        return None
    distinct = len(set(sequence)) == len(sequence)
    if task == "repetition" and len(sequence) == 4:
        a, b, c, d = sequence
        if a == c and b == d and a != b:
            return 0
        return 1 if distinct else None
    if task == "recursion" and len(sequence) == 4:
        a, b, c, d = sequence
        if b == c == d and a != b:
            return 0
        return 1 if distinct else None
    if task == "centre_embedding" and len(sequence) == 5:
        a, b, c, d, e = sequence
        if a == e and b == d and len({a, b, c}) == 3:
            return 0
        return 1 if distinct else None
    return None


def word_class(task: str, sequence):
    """Index of the class whose categories the words belong to, else None."""
    for index, categories in enumerate(WORD_CLASSES[task]):
        if len(sequence) == len(categories) and all(w in CATEGORY_WORDS[c] for w, c in zip(sequence, categories)):
            return index
    return None


def true_class(task: str, sequence):
    return letter_class(task, sequence) if task in ("repetition", "recursion", "centre_embedding") \
        else word_class(task, sequence)


def parse_prompt(text: str):
    """Split a prompt into (instruction, [(sequence, label)], query) with no help from the generator."""
    blocks = text.split("\n\n")
    instruction, demos, query = blocks[0], blocks[1:-1], blocks[-1]
    parsed = []
    for block in demos:
        match = re.fullmatch(r"(.+): (\w+)", block)
        assert match, f"demonstration {block!r} is not '<sequence>: <Label>'"
        parsed.append((tuple(match.group(1).split(" ")), match.group(2)))
    match = re.fullmatch(r"(.+):", query)
    assert match, f"query {query!r} is not '<sequence>:'"
    return instruction, parsed, tuple(match.group(1).split(" "))


def test_word_lists_have_16_distinct_single_words_per_category_and_no_overlap():
    assert set(CATEGORY_WORDS) >= {c for classes in WORD_CLASSES.values() for pair in classes for c in pair}
    every_word = [w for words in CATEGORY_WORDS.values() for w in words]
    for category, words in CATEGORY_WORDS.items():
        assert len(words) == 16 and len(set(words)) == 16, category
        assert all(re.fullmatch(r"[a-z]+", w) for w in words), category
    assert len(every_word) == len(set(every_word))


@pytest.mark.parametrize("task", list(TASKS))
def test_every_prompt_follows_the_claimed_patterns_and_layout(task):
    prompts = generate_prompts(task, SMALL)
    n_classes = len(WORD_CLASSES.get(task, [0, 1]))
    assert len(prompts) == SMALL.n_items * len(SMALL.demo_seeds)
    for prompt in prompts:
        instruction, demos, query = parse_prompt(prompt.text)
        assert "\n" not in instruction and instruction
        assert len(demos) == SMALL.shots
        # each demonstration's label is the label of its true pattern
        for sequence, label in demos:
            klass = true_class(task, sequence)
            assert klass is not None, f"{sequence} follows none of {task}'s patterns"
            assert label == LABELS[klass]
        assert true_class(task, query) == prompt.label_index
        assert prompt.labels == tuple(LABELS[:n_classes])
        # class-balanced demonstrations, distinct from each other and from the query
        counts = Counter(true_class(task, s) for s, _ in demos)
        full = [counts.get(c, 0) for c in range(n_classes)]
        assert max(full) - min(full) <= 1
        sequences = [s for s, _ in demos]
        assert len(set(sequences)) == len(sequences) and query not in sequences


@pytest.mark.parametrize("task", ["repetition", "category_pairs_4way_a"])
def test_queries_are_class_balanced_and_shared_across_demonstration_seeds(task):
    prompts = generate_prompts(task, SMALL)
    by_seed = {seed: [p for p in prompts if p.demo_seed == seed] for seed in SMALL.demo_seeds}
    queries = [[(p.item, p.query, p.label_index) for p in group] for group in by_seed.values()]
    assert queries[0] == queries[1] == queries[2]
    counts = Counter(label for _, _, label in queries[0])
    assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == len(prompts[0].labels)
    texts = [[p.text for p in group] for group in by_seed.values()]
    assert texts[0] != texts[1] != texts[2]


def test_generation_is_reproducible_and_seeded():
    assert generate_prompts("recursion", SMALL) == generate_prompts("recursion", SMALL)
    other = PatternTaskConfig(shots=5, n_items=12, demo_seeds=(0, 1, 2), seed=4)
    texts = [p.text for p in generate_prompts("recursion", SMALL)]
    assert [p.text for p in generate_prompts("recursion", other)] != texts


def test_segments_tag_the_text_they_cover():
    for task in ("centre_embedding", "category_pairs_b"):
        prompt = generate_prompts(task, SMALL)[0]
        first_demo = prompt.text.index("\n\n")
        covered = "".join(prompt.text[s.start:s.end] for s in prompt.segments)
        assert covered == prompt.text
        for segment in prompt.segments:
            piece = prompt.text[segment.start:segment.end]
            if segment.start < first_demo:
                assert segment.kind is None  # the instruction has no kind
                continue
            kind, _, value = segment.kind.partition(":")
            expected = {"letter": value, "word": value, "label": value}.get(kind)
            if expected is not None:
                assert piece == expected
            else:
                assert piece == {"sep:space": " ", "sep:colon": ":", "sep:newline": "\n\n"}[segment.kind]
            if kind == "word":
                assert piece in CATEGORY_WORDS[segment.category.split(":")[1]]


def test_prompts_survive_a_json_round_trip():
    prompts = {"repetition": generate_prompts("repetition", SMALL),
               "category_pairs_4way_b": generate_prompts("category_pairs_4way_b", SMALL)}
    loaded, config = prompts_from_json(json.loads(json.dumps(prompts_to_json(prompts, SMALL))))
    assert loaded == prompts and config == SMALL


def test_bad_task_name_and_bad_files_are_clear_errors():
    with pytest.raises(InputError, match="accepted: repetition"):
        get_task("repetitions")
    with pytest.raises(InputError, match="pattern-task file"):
        prompts_from_json({"tasks": {}})
    with pytest.raises(InputError, match="shots"):
        generate_prompts("repetition", PatternTaskConfig(shots=0))


@pytest.mark.parametrize("config, parameters", [(PatternTaskConfig(shots=0), ("shots", "n_items")),
                                                (PatternTaskConfig(n_items=0), ("shots", "n_items")),
                                                (PatternTaskConfig(demo_seeds=()), ("demo_seeds",))])
def test_bad_generation_settings_name_their_parameters(config, parameters):
    with pytest.raises(InputError) as caught:
        generate_prompts("repetition", config)
    assert caught.value.parameters == parameters and all(name in str(caught.value) for name in parameters)
    assert "--" not in str(caught.value)
