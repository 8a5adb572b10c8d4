"""Tokenization of a post as the paper does it, with ekphrasis's SocialTokenizer and TextPreProcessor.

- Mid-post hashtags become their segmented words (no `#`); trailing hashtags (only whitespace, punctuation,
  URLs or other hashtags after them) are removed from the text: they are the targets.
- The photo's own link (`https://t.co/...` pointing at pic.twitter.com / the photo page) is removed.
- Lowercase; URLs, mentions and numbers become `<url>`, `<mention>`, `<number>`; every other token that is
  not alphabetic (punctuation, emoji, `30th`) is removed. Words with inner apostrophes (`don't`) count as
  alphabetic.
- Keyphrases: every hashtag of the post (mid-post and trailing), segmented, first occurrence order, no repeats.

ekphrasis is used in its "fast" mode without hashtag unpacking or spell correction: those options load word
statistics that ekphrasis downloads at first use, which must not happen here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

HASHTAG_RE = re.compile(r"(?<![\w&/])#(\w+)")
MENTION_RE = re.compile(r"(?<!\w)@(\w{1,15})")
URL_RE = re.compile(r"https?://\S+")
WORD_RE = re.compile(r"^[a-z]+(?:'[a-z]+)*$")
KEPT_TAGS = {"<url>", "<mention>", "<number>"}
MEDIA_LINK_HOSTS = ("pic.twitter.com", "pic.x.com")


class Segmenter(Protocol):
    def segment(self, hashtag: str) -> str: ...


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str  # hashtag, url, mention
    value: str  # the hashtag's tag; for URLs "media" marks the photo's own link


def _is_media_link(url: dict) -> bool:
    if url.get("media_key"):
        return True
    display = url.get("display_url", "")
    expanded = url.get("expanded_url", "")
    return display.startswith(MEDIA_LINK_HOSTS) or "/photo/" in expanded or "/video/" in expanded


def entity_spans(text: str, entities: dict | None) -> list[Span]:
    """Hashtag, URL and mention spans (code-point offsets, as API v2 gives them), from the entities when the
    post has them, otherwise found in the text."""
    entities = entities or {}
    spans: list[Span] = []
    if any(entities.get(k) for k in ("hashtags", "urls", "mentions")):
        for h in entities.get("hashtags", []):
            spans.append(Span(h["start"], h["end"], "hashtag", h["tag"]))
        for u in entities.get("urls", []):
            spans.append(Span(u["start"], u["end"], "url", "media" if _is_media_link(u) else ""))
        for m in entities.get("mentions", []):
            spans.append(Span(m["start"], m["end"], "mention", m.get("username", "")))
        # Offsets that do not fit the text (edited or truncated tweets) fall back to the text itself.
        if all(0 <= s.start < s.end <= len(text) for s in spans) and all(
                text[s.start] == {"hashtag": "#", "mention": "@"}.get(s.kind, text[s.start]) for s in spans):
            return sorted(spans, key=lambda s: s.start)
        spans = []
    for m in HASHTAG_RE.finditer(text):
        spans.append(Span(m.start(), m.end(), "hashtag", m.group(1)))
    for m in URL_RE.finditer(text):
        spans.append(Span(m.start(), m.end(), "url", ""))
    for m in MENTION_RE.finditer(text):
        spans.append(Span(m.start(), m.end(), "mention", m.group(1)))
    return sorted(spans, key=lambda s: s.start)


def trailing_hashtags(text: str, spans: list[Span]) -> set[Span]:
    """Hashtags with nothing after them but whitespace, punctuation, URLs and other hashtags."""
    trailing, pos = set(), len(text)
    for span in reversed(spans):
        if any(ch.isalnum() for ch in text[span.end:pos]) or span.kind == "mention":
            break
        if span.kind == "hashtag":
            trailing.add(span)
        pos = span.start
    return trailing


def hashtags_of(text: str, entities: dict | None) -> list[str]:
    """The post's hashtags (without `#`), in order, repeats removed (case-insensitively)."""
    seen, tags = set(), []
    for span in entity_spans(text, entities):
        if span.kind == "hashtag" and span.value.lower() not in seen:
            seen.add(span.value.lower())
            tags.append(span.value)
    return tags


class PostTokenizer:
    def __init__(self, segmenter: Segmenter):
        from ekphrasis.classes.preprocessor import TextPreProcessor
        from ekphrasis.classes.tokenizer import SocialTokenizer

        self.segmenter = segmenter
        self.preprocessor = TextPreProcessor(
            normalize=["url", "email", "user", "number"], annotate=[], fix_html=True, mode="fast",
            segmenter=None, corrector=None, unpack_hashtags=False, unpack_contractions=False,
            spell_correct_elong=False, tokenizer=SocialTokenizer(lowercase=True).tokenize, dicts=[])

    def keyphrases(self, hashtags: list[str]) -> list[str]:
        out: list[str] = []
        for tag in hashtags:
            keyphrase = self.segmenter.segment(tag)
            if keyphrase and keyphrase not in out:
                out.append(keyphrase)
        return out

    def body(self, text: str, spans: list[Span]) -> str:
        """The text with mid-post hashtags segmented and trailing hashtags and the photo link removed."""
        trailing = trailing_hashtags(text, spans)
        pieces, pos = [], 0
        for span in spans:
            if span.start < pos:  # overlapping entities: keep the first
                continue
            pieces.append(text[pos:span.start])
            if span.kind == "hashtag":
                pieces.append(" " if span in trailing else f" {self.segmenter.segment(span.value)} ")
            elif span.kind == "url" and span.value == "media":
                pieces.append(" ")
            else:
                pieces.append(text[span.start:span.end])
            pos = span.end
        pieces.append(text[pos:])
        return "".join(pieces)

    def tokens(self, text: str) -> list[str]:
        """Normalised, lowercased tokens of plain text (no hashtag handling)."""
        out = []
        for token in self.preprocessor.pre_process_doc(text):
            token = "<mention>" if token == "<user>" else token
            if token in KEPT_TAGS or WORD_RE.match(token):
                out.append(token)
        return out

    def tokenize_post(self, text: str, entities: dict | None = None) -> tuple[list[str], list[str], list[str]]:
        """(tokens, keyphrases, hashtags) of one post."""
        spans = entity_spans(text, entities)
        hashtags = hashtags_of(text, entities)
        return self.tokens(self.body(text, spans)), self.keyphrases(hashtags), hashtags
