"""Few-shot abstract pattern tasks of [CS24] (DESIGN.md section 6), generated with a seed.

Each task asks a model to name the pattern of a short sequence with a made-up label, so
that only the demonstrations in the prompt can tell it which label goes with which
pattern:

* letter tasks: ``repetition`` (ABAB vs four distinct letters), ``recursion`` (ABBB vs
  four distinct letters), ``centre_embedding`` (ABCBA vs five distinct letters);
* word-category tasks: a pair of words, one from each of two categories
  (``category_pairs_a``: fruit+animal vs furniture+profession; ``category_pairs_b``:
  vegetable+vehicle vs body part+instrument; ``category_pairs_4way_a`` /
  ``category_pairs_4way_b``: four classes, labels Foo/Bar/Mur/Res).

A prompt is a one-line instruction, then ``shots`` demonstrations ``<sequence>: <Label>``
separated by blank lines, then the query ``<sequence>:``; the model's answer is scored
as the continuation `` <Label>`` (the lm-evaluation-harness convention of a one-space
target delimiter, which [CS24] built on). Demonstrations are class-balanced (counts per
class differ by at most one), never repeat the query, and are drawn afresh for every
query from each of the demonstration seeds, so that the same queries are asked with
different demonstrations (paired across seeds and across interventions).

Every prompt carries its *segments*: character spans tagged with a *kind* (the letter,
the word, the separator, the label). :mod:`icl_cmr.interventions.knockout` aligns tokens to
them to find "earlier tokens of the same kind". Prompts are saved to and loaded from JSON
(:func:`prompts_to_json` / :func:`prompts_from_json`) so that a run can be repeated on
exactly the same text.
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from icl_cmr.errors import InputError

#: Made-up labels, in class order: binary tasks use the first two ([CS24]).
LABELS: Tuple[str, ...] = ("Foo", "Bar", "Mur", "Res")

#: Letters the letter tasks draw from.
ALPHABET: Tuple[str, ...] = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")

#: Word lists written for this project: 16 single-word, lower-case, unambiguous members per
#: category, no word in two categories (checked by the tests).
CATEGORY_WORDS: Dict[str, Tuple[str, ...]] = {
    "fruit": ("apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear",
              "plum", "apricot", "kiwi", "melon", "papaya", "lime", "fig", "raspberry"),
    "animal": ("dog", "cat", "horse", "tiger", "lion", "rabbit", "elephant", "zebra",
               "giraffe", "monkey", "wolf", "bear", "fox", "deer", "camel", "squirrel"),
    "furniture": ("chair", "table", "sofa", "desk", "bed", "wardrobe", "bookshelf", "stool",
                  "dresser", "cabinet", "bench", "couch", "armchair", "cupboard", "ottoman", "nightstand"),
    "profession": ("doctor", "teacher", "lawyer", "engineer", "nurse", "farmer", "pilot", "chef",
                   "dentist", "plumber", "architect", "journalist", "accountant", "electrician",
                   "pharmacist", "librarian"),
    "vegetable": ("carrot", "potato", "onion", "cabbage", "broccoli", "spinach", "lettuce", "celery",
                  "cucumber", "radish", "turnip", "cauliflower", "leek", "beetroot", "parsnip", "asparagus"),
    "vehicle": ("car", "bus", "truck", "bicycle", "motorcycle", "train", "tram", "van",
                "tractor", "scooter", "taxi", "ambulance", "lorry", "jeep", "minibus", "limousine"),
    "body_part": ("hand", "foot", "elbow", "knee", "shoulder", "ankle", "wrist", "finger",
                  "nose", "ear", "chin", "forehead", "thumb", "heel", "neck", "cheek"),
    "instrument": ("piano", "violin", "guitar", "trumpet", "flute", "drum", "cello", "harp",
                   "clarinet", "saxophone", "trombone", "banjo", "oboe", "accordion", "harmonica", "tuba"),
}

#: Kinds of the structural segments (see :class:`Segment`).
KIND_SPACE = "sep:space"
KIND_COLON = "sep:colon"
KIND_NEWLINE = "sep:newline"


@dataclass(frozen=True)
class PatternTask:
    """One classification task.

    Attributes
    ----------
    name : str
        Registry key (:data:`TASKS`).
    family : {"letters", "words"}
        Letter templates or word-category pairs.
    classes : tuple of tuple of str
        Per class, in label order: for letters a template such as ``("A", "B", "A", "B")``
        (equal symbols = equal letters, different symbols = different letters); for words
        the categories of the sequence's positions, e.g. ``("fruit", "animal")``.
    instruction : str
        The prompt's first line.
    description : str
        One line for tables and README.
    """

    name: str
    family: str
    classes: Tuple[Tuple[str, ...], ...]
    instruction: str
    description: str

    @property
    def labels(self) -> Tuple[str, ...]:
        """The made-up labels of the classes, in class order."""
        return LABELS[: len(self.classes)]

    @property
    def chance(self) -> float:
        """Accuracy of guessing: 1 / number of classes."""
        return 1.0 / len(self.classes)


_LETTER_INSTRUCTION = "Classify each sequence of letters by its pattern."
_WORD_INSTRUCTION = "Classify each pair of words by its pattern."

#: The tasks of [CS24] (DESIGN.md section 6); class 0 is the structured pattern for letter tasks.
TASKS: Dict[str, PatternTask] = {task.name: task for task in (
    PatternTask("repetition", "letters", (tuple("ABAB"), tuple("ABCD")), _LETTER_INSTRUCTION,
                "ABAB vs four distinct letters"),
    PatternTask("recursion", "letters", (tuple("ABBB"), tuple("ABCD")), _LETTER_INSTRUCTION,
                "ABBB vs four distinct letters"),
    PatternTask("centre_embedding", "letters", (tuple("ABCBA"), tuple("ABCDE")), _LETTER_INSTRUCTION,
                "ABCBA vs five distinct letters"),
    PatternTask("category_pairs_a", "words", (("fruit", "animal"), ("furniture", "profession")),
                _WORD_INSTRUCTION, "fruit+animal vs furniture+profession"),
    PatternTask("category_pairs_b", "words", (("vegetable", "vehicle"), ("body_part", "instrument")),
                _WORD_INSTRUCTION, "vegetable+vehicle vs body part+instrument"),
    PatternTask("category_pairs_4way_a", "words",
                (("fruit", "animal"), ("furniture", "profession"), ("vegetable", "vehicle"),
                 ("body_part", "instrument")),
                _WORD_INSTRUCTION, "fruit+animal / furniture+profession / vegetable+vehicle / body part+instrument"),
    PatternTask("category_pairs_4way_b", "words",
                (("fruit", "vehicle"), ("vegetable", "animal"), ("furniture", "instrument"),
                 ("body_part", "profession")),
                _WORD_INSTRUCTION, "fruit+vehicle / vegetable+animal / furniture+instrument / body part+profession"),
)}


@dataclass(frozen=True)
class PatternTaskConfig:
    """Generation settings; defaults follow [CS24] (DESIGN.md section 6).

    Attributes
    ----------
    shots : int
        Demonstrations per prompt (5 in [CS24]).
    n_items : int
        Queries per task (class-balanced).
    demo_seeds : tuple of int
        One prompt per query and demonstration seed (3 seeds in [CS24]).
    seed : int
        Seed of the queries; the demonstrations use ``(seed, task, demo_seed)``.
    """

    shots: int = 5
    n_items: int = 50
    demo_seeds: Tuple[int, ...] = (0, 1, 2)
    seed: int = 0


@dataclass(frozen=True)
class Segment:
    """A character span of a prompt and what it is.

    Attributes
    ----------
    start, end : int
        ``text[start:end]``.
    kind : str or None
        ``"letter:A"``, ``"word:apple"``, ``"label:Foo"``, ``"sep:space"``, ``"sep:colon"``,
        ``"sep:newline"``; None for the instruction (never a source of knockout edges).
    category : str or None
        ``"category:fruit"`` for a word, else the same as ``kind`` (the coarser kind
        :mod:`icl_cmr.interventions.knockout` can use instead).
    """

    start: int
    end: int
    kind: Optional[str]
    category: Optional[str]


@dataclass(frozen=True)
class PatternPrompt:
    """One prompt: a query with its demonstrations.

    Attributes
    ----------
    task : str
    item : int
        Index of the query within the task (the same across demonstration seeds).
    demo_seed : int
    query : tuple of str
        The query sequence.
    label_index : int
        Its class (index into ``labels``).
    labels : tuple of str
    text : str
        The whole prompt, ending with the query's ``":"`` (no trailing space).
    segments : tuple of Segment
        Non-overlapping spans covering ``text`` from the first demonstration on.
    """

    task: str
    item: int
    demo_seed: int
    query: Tuple[str, ...]
    label_index: int
    labels: Tuple[str, ...]
    text: str
    segments: Tuple[Segment, ...] = field(repr=False)

    @property
    def continuations(self) -> Tuple[str, ...]:
        """The answer strings scored for each label: `` Foo``, `` Bar``, ..."""
        return tuple(" " + label for label in self.labels)


def get_task(name: str) -> PatternTask:
    """The registered task ``name``; :class:`InputError` lists the accepted names."""
    try:
        return TASKS[name]
    except KeyError:
        raise InputError(f"unknown task {name!r}; accepted: {', '.join(TASKS)}") from None


def _task_stream(task: PatternTask) -> int:
    # A stable per-task number (not Python's salted hash) so every task has its own random stream.
    return zlib.crc32(task.name.encode("utf-8"))


def sample_sequence(task: PatternTask, class_index: int, rng: np.random.Generator) -> Tuple[str, ...]:
    """Draw one sequence of class ``class_index``.

    Letters: distinct random letters for the template's distinct symbols. Words: a random
    word of each position's category.

    Returns
    -------
    tuple of str
        The sequence's elements (letters or words).
    """
    template = task.classes[class_index]
    if task.family == "letters":
        symbols = list(dict.fromkeys(template))  # distinct symbols in order of appearance
        letters = rng.choice(len(ALPHABET), size=len(symbols), replace=False)
        mapping = {symbol: ALPHABET[int(index)] for symbol, index in zip(symbols, letters)}
        return tuple(mapping[symbol] for symbol in template)
    return tuple(CATEGORY_WORDS[category][int(rng.integers(len(CATEGORY_WORDS[category])))]
                 for category in template)


def balanced_classes(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` class indices whose counts differ by at most one, in random order.

    Which classes get the extra members (when ``n_classes`` does not divide ``n``) is random.

    Returns
    -------
    numpy.ndarray of int, shape [n]
    """
    counts = np.full(n_classes, n // n_classes)
    counts[rng.choice(n_classes, size=n % n_classes, replace=False)] += 1
    classes = np.repeat(np.arange(n_classes), counts)
    return rng.permutation(classes)


def _element_kinds(task: PatternTask, class_index: int, element: str, position: int) -> Tuple[str, str]:
    if task.family == "letters":
        kind = f"letter:{element}"
        return kind, kind
    return f"word:{element}", f"category:{task.classes[class_index][position]}"


class _PromptBuilder:
    """Accumulates text and its segments."""

    def __init__(self) -> None:
        self.parts: List[str] = []
        self.segments: List[Segment] = []
        self.length = 0

    def add(self, text: str, kind: Optional[str], category: Optional[str] = None) -> None:
        self.parts.append(text)
        self.segments.append(Segment(self.length, self.length + len(text), kind,
                                     kind if category is None else category))
        self.length += len(text)

    def add_sequence(self, task: PatternTask, class_index: int, sequence: Sequence[str]) -> None:
        for position, element in enumerate(sequence):
            if position:
                self.add(" ", KIND_SPACE)
            kind, category = _element_kinds(task, class_index, element, position)
            self.add(element, kind, category)
        self.add(":", KIND_COLON)


def build_prompt(task: PatternTask, demos: Sequence[Tuple[Tuple[str, ...], int]],
                 query: Tuple[str, ...], query_class: int, item: int = 0, demo_seed: int = 0) -> PatternPrompt:
    """Assemble a prompt from demonstrations ``(sequence, class)`` and a query.

    Layout: ``instruction\\n\\n`` then ``<seq>: <Label>`` blocks joined by ``\\n\\n``, then
    ``\\n\\n<query>:``.

    Returns
    -------
    PatternPrompt
    """
    builder = _PromptBuilder()
    builder.add(task.instruction, None)
    for sequence, class_index in demos:
        builder.add("\n\n", KIND_NEWLINE)
        builder.add_sequence(task, class_index, sequence)
        builder.add(" ", KIND_SPACE)
        builder.add(task.labels[class_index], f"label:{task.labels[class_index]}")
    builder.add("\n\n", KIND_NEWLINE)
    builder.add_sequence(task, query_class, query)
    return PatternPrompt(task=task.name, item=item, demo_seed=demo_seed, query=tuple(query),
                         label_index=int(query_class), labels=task.labels, text="".join(builder.parts),
                         segments=tuple(builder.segments))


def generate_prompts(task: "PatternTask | str", config: PatternTaskConfig = PatternTaskConfig()) -> List[PatternPrompt]:
    """All prompts of one task: ``n_items`` queries x ``len(demo_seeds)`` demonstration sets.

    Parameters
    ----------
    task : PatternTask or str
    config : PatternTaskConfig

    Returns
    -------
    list of PatternPrompt
        Ordered by demonstration seed, then item. The queries (and their classes) are the
        same for every demonstration seed; queries are class-balanced, and so are each
        prompt's ``shots`` demonstrations, which never equal the query or each other.

    Raises
    ------
    InputError
        Non-positive ``shots`` or ``n_items``, or no demonstration seeds.
    """
    task = get_task(task) if isinstance(task, str) else task
    if config.shots < 1 or config.n_items < 1:
        raise InputError(f"`shots` and `n_items` must be >= 1, got `shots`={config.shots}, `n_items`={config.n_items}",
                         parameters=("shots", "n_items"))
    if not config.demo_seeds:
        raise InputError("at least one demonstration seed is needed (`demo_seeds`)", parameters=("demo_seeds",))
    n_classes = len(task.classes)
    query_rng = np.random.default_rng([config.seed, _task_stream(task)])
    query_classes = balanced_classes(config.n_items, n_classes, query_rng)
    queries = [sample_sequence(task, int(c), query_rng) for c in query_classes]
    prompts: List[PatternPrompt] = []
    for demo_seed in config.demo_seeds:
        rng = np.random.default_rng([config.seed, _task_stream(task), 1 + int(demo_seed)])
        for item, (query, query_class) in enumerate(zip(queries, query_classes)):
            demo_classes = balanced_classes(config.shots, n_classes, rng)
            seen = {query}
            demos = []
            for class_index in demo_classes:
                # Rejection keeps demonstrations distinct from the query and each other; the pools
                # (26 letters, 16 x 16 word pairs) make this take a couple of draws at most.
                for _ in range(1000):
                    sequence = sample_sequence(task, int(class_index), rng)
                    if sequence not in seen:
                        break
                else:  # pragma: no cover - impossible with the pools above
                    raise InputError(f"cannot draw {config.shots} distinct demonstrations for task {task.name}")
                seen.add(sequence)
                demos.append((sequence, int(class_index)))
            prompts.append(build_prompt(task, demos, query, int(query_class), item=item, demo_seed=int(demo_seed)))
    return prompts


# ----------------------------------------------------------------------------- JSON round trip

def prompts_to_json(prompts: Mapping[str, Sequence[PatternPrompt]], config: PatternTaskConfig) -> dict:
    """A JSON-ready dict of ``{task: prompts}`` and the config that generated them."""
    return {
        "format": "icl_cmr.pattern_tasks/1",
        "config": {**asdict(config), "demo_seeds": list(config.demo_seeds)},
        "tasks": {name: [{**asdict(prompt), "query": list(prompt.query), "labels": list(prompt.labels),
                          "segments": [asdict(segment) for segment in prompt.segments]}
                         for prompt in task_prompts]
                  for name, task_prompts in prompts.items()},
    }


def prompts_from_json(data: dict) -> Tuple[Dict[str, List[PatternPrompt]], PatternTaskConfig]:
    """Inverse of :func:`prompts_to_json`.

    Raises
    ------
    InputError
        If ``data`` is not in that format.
    """
    if not isinstance(data, dict) or data.get("format") != "icl_cmr.pattern_tasks/1":
        raise InputError("not a pattern-task file (expected format icl_cmr.pattern_tasks/1)")
    try:
        raw = dict(data["config"])
        config = PatternTaskConfig(**{**raw, "demo_seeds": tuple(raw["demo_seeds"])})
        prompts = {
            name: [PatternPrompt(**{**entry, "query": tuple(entry["query"]), "labels": tuple(entry["labels"]),
                                    "segments": tuple(Segment(**segment) for segment in entry["segments"])})
                   for entry in entries]
            for name, entries in data["tasks"].items()
        }
    except (KeyError, TypeError) as err:
        raise InputError(f"corrupt pattern-task file: {err}") from None
    return prompts, config
