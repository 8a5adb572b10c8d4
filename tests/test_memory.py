"""The keyphrase memory (model/memory.py): TF-IDF retrieval of training posts and their labels' vote."""
from __future__ import annotations

import math

import pytest
import torch

from model.data import Example, pad_rows
from model.memory import KeyphraseMemory

N_WORDS = 12      # ids 0-4 are the special words; 5.. are ordinary words


def example(src, labels, attrs=()):
    return Example(index=0, src=list(src), src_ext=[], oov=[], oov_word_ids=[], attrs=list(attrs), dec_in=[],
                   dec_out=[], labels=list(labels))


TRAIN = [
    example([5, 6, 7], [1]),            # "a b c" -> label 1
    example([5, 6, 8], [1, 2]),         # "a b d" -> labels 1, 2
    example([9, 10], [3], attrs=[5]),   # "e f", attribute word 5 -> label 3
    example([11, 4, 11], [0]),          # a keyphrase outside the labels only
]


def query(memory, posts, attrs=None):
    attrs = attrs or [[] for _ in posts]
    return memory.label_distribution(pad_rows(posts), pad_rows(attrs), n_labels=4)


def test_idf_and_vectors_are_tf_idf_of_the_training_posts():
    memory = KeyphraseMemory.build(TRAIN, N_WORDS, k=2, power=1.0)
    idf = memory.idf
    assert idf.shape == (2 * N_WORDS,)
    assert idf[5].item() == pytest.approx(math.log(4 / 3))     # word 5 in two posts: log(N / (1 + df))
    assert idf[7].item() == pytest.approx(math.log(4 / 2))
    assert idf[N_WORDS + 5].item() == pytest.approx(math.log(4 / 2))   # attribute word 5: its own feature
    assert idf[4].item() == 0.0 and idf[N_WORDS + 4].item() == 0.0    # <sep> is no evidence
    # word 11 twice: tf = 1 + ln 2; the row is L2-normalised
    keys = memory.keys().to_dense()
    assert keys.shape == (4, 2 * N_WORDS)
    assert keys[3, 11].item() == pytest.approx(1.0)
    row = torch.tensor([idf[5], idf[6], idf[7]])
    assert keys[0, 5:8].tolist() == pytest.approx((row / row.norm()).tolist())


def test_vote_of_the_nearest_posts_weighted_by_similarity():
    memory = KeyphraseMemory.build(TRAIN, N_WORDS, k=2, power=1.0)
    p = query(memory, [[5, 6, 7]])                           # the first training post's words exactly
    keys = memory.keys().to_dense()
    sim0, sim1 = 1.0, (keys[0] @ keys[1]).item()             # its two neighbours
    assert 0 < sim1 < 1
    # label 1: both neighbours; label 2: the second only
    expected = torch.tensor([0.0, sim0 + sim1, sim1, 0.0]) / (sim0 + 2 * sim1)
    assert p[0].tolist() == pytest.approx(expected.tolist())
    # power 2 sharpens toward the nearest post
    p2 = query(KeyphraseMemory.build(TRAIN, N_WORDS, k=2, power=2.0), [[5, 6, 7]])
    assert p2[0, 2].item() == pytest.approx(sim1 ** 2 / (1 + 2 * sim1 ** 2))
    assert p2[0, 2] < p[0, 2]


def test_attribute_words_match_attributes_not_text():
    memory = KeyphraseMemory.build(TRAIN, N_WORDS, k=1, power=1.0)
    assert query(memory, [[9]])[0].tolist() == pytest.approx([0, 0, 0, 1])
    # word 5 as an attribute finds the post whose image has attribute 5 (label 3), not the posts with word 5
    assert query(memory, [[]], attrs=[[5]])[0].tolist() == pytest.approx([0, 0, 0, 1])
    assert query(memory, [[5]])[0, 3].item() == 0.0


def test_posts_without_evidence_get_no_vote():
    memory = KeyphraseMemory.build(TRAIN, N_WORDS, k=3, power=1.0)
    p = query(memory, [[3, 4], [11]])          # only special words; a word whose post has no label
    assert p.tolist() == [[0.0] * 4, [0.0] * 4]
    assert torch.isfinite(p).all()


def test_chunked_build_and_checkpoint_state_give_the_same_memory():
    whole = KeyphraseMemory.build(TRAIN, N_WORDS, k=2, power=2.0)
    chunked = KeyphraseMemory.build(TRAIN, N_WORDS, k=2, power=2.0, chunk=1)
    assert torch.equal(whole.keys().to_dense(), chunked.keys().to_dense())
    restored = KeyphraseMemory(N_WORDS, k=2, power=2.0)        # empty: the saved tensors set its size
    restored.load_state_dict(whole.state_dict())
    posts, attrs = [[5, 6], [9, 10, 8], [7]], [[5], [], []]
    assert torch.equal(query(whole, posts, attrs), query(restored, posts, attrs))
    assert (restored.k, restored.power) == (2, 2.0)

