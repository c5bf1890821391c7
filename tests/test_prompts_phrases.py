"""Prompt parsing, caption spans, chunking and the phrase -> class mapping on hand-made positive maps."""

import pytest
import torch

from grounded.core.phrases import class_scores, matched_phrase, positive_map
from grounded.core.prompts import Prompt, PromptError, build_caption, chunk_classes, parse_prompt


def test_parse_prompt_splits_normalises_and_dedupes():
    assert parse_prompt("dog . red car . the man's left shoe").classes == (
        "dog",
        "red car",
        "the man's left shoe",
    )
    assert parse_prompt("  dog.  Dog .red   car..").classes == ("dog", "red car")


@pytest.mark.parametrize("text", ["", "   ", " . . ", "."])
def test_empty_prompt_is_refused_with_a_clear_message(text):
    with pytest.raises(PromptError, match="empty prompt"):
        parse_prompt(text)


def test_prompt_of_accepts_lists_and_prompts():
    p = Prompt.of(["cat", " red  car ", "cat"])
    assert p.classes == ("cat", "red car")
    assert Prompt.of(p) is p
    assert str(p) == "cat . red car"


def test_caption_spans_point_at_each_class():
    cap = build_caption(["dog", "red car", "the man's left shoe"])
    assert cap.text == "dog . red car . the man's left shoe ."
    assert [cap.text[a:b] for a, b in cap.spans] == ["dog", "red car", "the man's left shoe"]
    sub = build_caption(["dog", "red car", "cat"], [2, 0])
    assert sub.text == "cat . dog ."
    assert sub.class_ids == (2, 0)
    assert [sub.text[a:b] for a, b in sub.spans] == ["cat", "dog"]


def test_chunking_respects_the_token_budget():
    classes = [f"class{i}" for i in range(10)]

    def count(text: str) -> int:
        return 3  # every class is 3 tokens, plus 1 for its "."

    # budget 2 specials + 4 per class: max_tokens=18 fits 4 classes per caption
    chunks = chunk_classes(classes, count, 18)
    assert chunks == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert chunk_classes(classes, count, 256) == [tuple(range(10))]


def test_chunking_refuses_a_single_class_over_the_limit():
    with pytest.raises(PromptError, match="tokens long"):
        chunk_classes(["x" * 10], lambda t: 300, 256)


# ---------------------------------------------------------------- positive map
# caption "dog . red car ." tokenised as [CLS] dog . red car . [SEP]
OFFSETS = [(0, 0), (0, 3), (4, 5), (6, 9), (10, 13), (14, 15), (0, 0)]
SPANS = [(0, 3), (6, 13)]


def test_positive_map_assigns_tokens_by_character_span():
    pos = positive_map(OFFSETS, SPANS)
    assert pos.tolist() == [
        [False, True, False, False, False, False, False],
        [False, False, False, True, True, False, False],
    ]
    padded = positive_map(OFFSETS, SPANS, num_tokens=10)
    assert padded.shape == (2, 10) and not padded[:, 7:].any()


def test_positive_map_handles_subword_tokens_inside_a_word():
    # "the man's shoe ." -> the, man, ', s, sh, ##oe, .
    offsets = [(0, 0), (0, 3), (4, 7), (7, 8), (8, 9), (10, 12), (12, 14), (15, 16), (0, 0)]
    pos = positive_map(offsets, [(0, 14)])
    assert pos[0].nonzero().flatten().tolist() == [1, 2, 3, 4, 5, 6]


def test_class_scores_max_and_mean_reductions():
    probs = torch.tensor(
        [
            [0.0, 0.9, 0.5, 0.1, 0.2, 0.0, 0.0],  # a dog
            [0.0, 0.1, 0.0, 0.3, 0.8, 0.0, 0.0],  # a red car: "car" token high
        ]
    )
    pos = positive_map(OFFSETS, SPANS)
    top = class_scores(probs, pos, "max")
    assert torch.allclose(top, torch.tensor([[0.9, 0.2], [0.1, 0.8]]))
    mean = class_scores(probs, pos, "mean")
    assert torch.allclose(mean, torch.tensor([[0.9, 0.15], [0.1, 0.55]]))
    # the "." token (0.5 for query 0) never counts for any class
    assert top.argmax(-1).tolist() == [0, 1]


def test_first_word_substring_cannot_steal_a_class():
    """The anchor's bug: 'car' vs 'carpet' by substring. Here classes own disjoint token spans."""
    cap = build_caption(["carpet", "car"])
    offsets = [(0, 0), (0, 6), (7, 8), (9, 12), (13, 14), (0, 0)]
    pos = positive_map(offsets, cap.spans)
    probs = torch.tensor([[0.0, 0.1, 0.0, 0.7, 0.0, 0.0]])
    assert class_scores(probs, pos).argmax(-1).item() == 1  # "car", not "carpet"


def test_matched_phrase_is_the_exact_span_above_text_threshold():
    caption = "dog . the man's left shoe ."
    # [CLS] dog . the man ' s left shoe . [SEP]
    offsets = [
        (0, 0),
        (0, 3),
        (4, 5),
        (6, 9),
        (10, 13),
        (13, 14),
        (14, 15),
        (16, 20),
        (21, 25),
        (26, 27),
        (0, 0),
    ]
    pos = positive_map(offsets, [(0, 3), (6, 25)])
    probs = torch.tensor([0.0, 0.0, 0.0, 0.1, 0.2, 0.1, 0.1, 0.6, 0.7, 0.0, 0.0])
    assert matched_phrase(caption, offsets, probs, pos[1], 0.25) == "left shoe"
    probs[4] = 0.3
    assert matched_phrase(caption, offsets, probs, pos[1], 0.25) == "man's left shoe"
    # nothing above the threshold: the whole class
    assert matched_phrase(caption, offsets, torch.zeros(11), pos[1], 0.25) == "the man's left shoe"


def test_class_names_cannot_contain_the_separator():
    with pytest.raises(PromptError, match="contains '.'"):
        Prompt.of(["st. bernard"])


def test_a_class_without_readable_tokens_is_a_prompt_error():
    with pytest.raises(PromptError, match="own no tokens"):
        positive_map([(0, 0), (0, 3), (0, 0)], [(0, 3), (6, 7)])
