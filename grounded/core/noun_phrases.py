"""Noun phrases from a caption: the tags a captioner (BLIP) feeds to the detector.

Part-of-speech tags come from the Brill-style tagger that ``textblob`` ships *inside its wheel* (the Pattern
English lexicon, ``textblob/en/en-lexicon.txt``, with its context and morphology rules): no model or corpus is
downloaded at run time (NLTK's data packages are never touched). A small rule-based chunker on those tags
then reads noun phrases as ``adjectives* nouns+`` (adjectives may be joined by ``and`` / ``,``, as in
"red and white bus"); determiners, numbers, pronouns and quantifiers are dropped, a possessive ends a phrase,
and phrases whose head noun is a stop word ("picture", "front", "side" ...) are filtered out. Phrases are
lower-cased and de-duplicated in caption order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

__all__ = ["DEFAULT_STOP_PHRASES", "noun_phrases", "pos_tags"]

#: Whole phrases (or head nouns) that name no object a detector could box: framing words, positions,
#: vague nouns, and BLIP's well-known artefact words.
DEFAULT_STOP_PHRASES: frozenset[str] = frozenset(
    {
        # framing
        "picture",
        "photo",
        "photograph",
        "image",
        "view",
        "close up",
        "closeup",
        "close-up",
        "shot",
        "scene",
        "stock photo",
        "painting",
        "drawing",
        "illustration",
        # positions
        "front",
        "back",
        "side",
        "top",
        "bottom",
        "middle",
        "center",
        "centre",
        "left",
        "right",
        "edge",
        "corner",
        "background",
        "foreground",
        "distance",
        # vague or quantity nouns
        "thing",
        "things",
        "something",
        "someone",
        "lot",
        "lots",
        "group",
        "bunch",
        "couple",
        "pair",
        "number",
        "kind",
        "type",
        "piece",
        "way",
        "day",
        "time",
        # BLIP artefacts
        "arafed",
        "araffe",
        "arafe",
        "araffed",
    }
)

_NOUN = ("NN", "NNS", "NNP", "NNPS")
_ADJECTIVE = ("JJ", "JJR", "JJS")
# dropped from the front of a phrase (tags only ever start a phrase, so they are simply not part of one)
_QUANTIFIERS = frozenset({"other", "several", "many", "various", "different", "few", "some", "much", "more"})
_SENTENCE_END = re.compile(r"[.!?;:]")
_CLEAN = re.compile(r"[^\w\s'&,-]")


@lru_cache(maxsize=1)
def _tagger() -> Any:
    try:
        from textblob.en import tag
    except ImportError as exc:  # pragma: no cover - textblob is a dependency
        raise ImportError("noun-phrase extraction needs textblob: pip install textblob") from exc
    return tag


def pos_tags(text: str) -> list[tuple[str, str]]:
    """``(word, Penn tag)`` pairs of ``text`` from textblob's bundled Brill tagger (no download)."""
    text = _CLEAN.sub(" ", _SENTENCE_END.sub(" , ", text.replace("’", "'")))
    if not text.strip():
        return []
    return [(str(w), str(t)) for w, t in _tagger()(text, tokenize=True)]


def _phrases(tags: list[tuple[str, str]]) -> Iterable[tuple[list[str], str]]:
    """Maximal ``adjectives* nouns+`` runs: yields (words, head noun)."""
    i, n = 0, len(tags)
    while i < n:
        words: list[str] = []
        j = i
        # adjectives, possibly joined by "and" / "," when another adjective follows
        while j < n:
            word, tag = tags[j]
            if tag in _ADJECTIVE:
                if word.lower() not in _QUANTIFIERS:
                    words.append(word)
                j += 1
            elif (tag == "CC" or word == ",") and words and j + 1 < n and tags[j + 1][1] in _ADJECTIVE:
                words.append(word if word != "," else ",")
                j += 1
            else:
                break
        k = j
        while k < n and tags[k][1] in _NOUN:
            k += 1
        if k > j:  # a noun run: a phrase
            nouns = [w for w, _ in tags[j:k]]
            yield [*words, *nouns], nouns[-1]
            i = k
        else:
            i = max(j, i + 1)


def _join(words: list[str]) -> str:
    return " ".join(words).replace(" ,", ",")


def noun_phrases(caption: str, stop_phrases: Iterable[str] | None = None) -> list[str]:
    """The noun phrases of ``caption``, lower-cased, de-duplicated, in order; e.g.

    ``"a man riding a red bicycle next to a brown dog"`` → ``["man", "red bicycle", "brown dog"]``.

    A phrase is dropped when it, its head noun, or its head noun with its modifiers removed is in
    ``stop_phrases`` (default :data:`DEFAULT_STOP_PHRASES`); stop words among the modifiers are removed
    (``"arafed man"`` → ``"man"``).
    """
    stops = {s.lower().strip() for s in (DEFAULT_STOP_PHRASES if stop_phrases is None else stop_phrases)}
    out: list[str] = []
    seen: set[str] = set()
    for words, head in _phrases(pos_tags(caption.lower())):
        head = head.lower()
        kept = [w for w in words if w.lower() not in stops or w is words[-1]]
        while kept and kept[0] in (",", "and", "or", "&"):
            kept.pop(0)
        phrase = " ".join(_join(kept).split()).strip(" ,-'")
        if not phrase or phrase in stops or head in stops or "." in phrase:
            continue
        if phrase not in seen:
            seen.add(phrase)
            out.append(phrase)
    return out
