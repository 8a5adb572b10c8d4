"""Tokenization rules (paper): normalisation tags, non-alphabetic tokens dropped, mid-post hashtags segmented,
trailing hashtags removed, the photo link removed, keyphrases from every hashtag."""
from __future__ import annotations

import socket

import pytest

from pipeline.text import PostTokenizer, entity_spans, hashtags_of, trailing_hashtags


class FakeSegmenter:
    """Stands in for pipeline.segment's segmenter: a fixed table, lowercase fallback."""

    TABLE = {"superbowl": "super bowl", "tbt": "throwback thursday", "mondaymotivation": "monday motivation"}

    def segment(self, hashtag: str) -> str:
        key = hashtag.lstrip("#").lower()
        return self.TABLE.get(key, key)


@pytest.fixture(scope="module")
def tokenizer():
    return PostTokenizer(FakeSegmenter())


def test_normalisation_and_non_alphabetic_tokens(tokenizer):
    tokens, _, _ = tokenizer.tokenize_post("Hey @Bob_99!!! See https://example.com/x NOW, 2019 rocks :) 😀 #tbt")
    assert tokens == ["hey", "<mention>", "see", "<url>", "now", "<number>", "rocks"]


def test_mid_post_hashtags_are_segmented_and_trailing_ones_removed(tokenizer):
    text = "Watching the #SuperBowl with my family tonight #MondayMotivation #tbt"
    tokens, keyphrases, hashtags = tokenizer.tokenize_post(text)
    assert tokens == ["watching", "the", "super", "bowl", "with", "my", "family", "tonight"]
    assert keyphrases == ["super bowl", "monday motivation", "throwback thursday"]
    assert hashtags == ["SuperBowl", "MondayMotivation", "tbt"]


def test_entities_and_the_photo_link(tokenizer):
    text = "Big win for the team #NFL today! https://t.co/abc #superbowl https://t.co/pic"

    def at(piece):
        return {"start": text.index(piece), "end": text.index(piece) + len(piece)}

    entities = {
        "hashtags": [{**at("#NFL"), "tag": "NFL"}, {**at("#superbowl"), "tag": "superbowl"}],
        "urls": [{**at("https://t.co/abc"), "url": "https://t.co/abc", "expanded_url": "https://example.org/x"},
                 {**at("https://t.co/pic"), "url": "https://t.co/pic", "display_url": "pic.twitter.com/xyz",
                  "media_key": "3_1"}],
    }
    tokens, keyphrases, _ = tokenizer.tokenize_post(text, entities)
    # #NFL is followed by words: mid-post, kept as a word; #superbowl has only links after it: trailing.
    assert tokens == ["big", "win", "for", "the", "team", "nfl", "today", "<url>"]
    assert keyphrases == ["nfl", "super bowl"]


def test_repeated_hashtags_give_one_keyphrase(tokenizer):
    _, keyphrases, hashtags = tokenizer.tokenize_post("#SuperBowl party for the #superbowl fans #SUPERBOWL")
    assert keyphrases == ["super bowl"] and hashtags == ["SuperBowl"]


def test_trailing_rule_and_fallback_spans():
    text = "nice #one here #two, #three ."
    spans = entity_spans(text, None)
    assert {s.value for s in trailing_hashtags(text, spans)} == {"two", "three"}
    assert hashtags_of("a #b c&#39; d #e", None) == ["b", "e"]  # HTML entity is not a hashtag
    # Entity offsets that do not fit the text: the text's own hashtags are used instead.
    assert hashtags_of("short #tag", {"hashtags": [{"start": 40, "end": 45, "tag": "gone"}]}) == ["tag"]


def test_no_network_is_touched(tokenizer, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tokenization tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    tokens, keyphrases, hashtags = PostTokenizer(FakeSegmenter()).tokenize_post("A fresh tokenizer #SuperBowl")
    assert (tokens, keyphrases, hashtags) == (["a", "fresh", "tokenizer"], ["super bowl"], ["SuperBowl"])
