"""The learned ranking (model/ranker.py) and the keyphrase memory's label centroids."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

import pytest
import torch

from model import ranker
from model.beam import rank, rank_scores
from model.config import CONFIGS, ModelConfig
from model.data import read_split
from model.memory import CENTROID_TEMPERATURE, KeyphraseMemory

sys.path.insert(0, os.path.dirname(__file__))
from test_memory import N_WORDS, TRAIN  # noqa: E402
from test_model import POSTS, TEXT_EMBEDDING, TINY, write_dataset  # noqa: E402

GEN = [("a b", -1.0, -0.5), ("c", -2.0, -1.0)]
SIDES = ([("c", 0.6), ("d", 0.3)], [("d", 0.5)], [("c", 0.2), ("e", 0.1)])


def test_candidate_features_by_hand():
    rows = ranker.candidate_features(GEN, SIDES, ["x", "a", "b", "<sep>", "d"], {"c": 3, "d": 1, "e": 7})
    q = [math.exp(-0.5) / (math.exp(-0.5) + math.exp(-1.0)), math.exp(-1.0) / (math.exp(-0.5) + math.exp(-1.0))]
    assert list(rows) == ["a b", "c", "d", "e"]          # the generator's hypotheses first
    #                     generator classifier memory centroid present log_frequency label words
    assert rows["a b"] == pytest.approx([q[0], 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 2.0])
    assert rows["c"] == pytest.approx([q[1], 0.6, 0.0, 0.2, 0.0, math.log(4), 1.0, 1.0])
    assert rows["d"] == pytest.approx([0.0, 0.3, 0.5, 0.0, 1.0, math.log(2), 1.0, 1.0])
    assert rows["e"] == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.0, math.log(8), 1.0, 1.0])
    assert not ranker.is_present("b a", ["a", "b"]) and not ranker.is_present("a b c", ["a", "b"])


def test_learned_scores_are_the_softmax_of_the_weighted_features():
    rows = {"x": [1.0, 0, 0, 0, 1.0, 0, 0, 1.0], "y": [0.5, 0, 0, 0, 0.0, 0, 1.0, 2.0]}
    weights = [2.0, 0, 0, 0, 1.0, 0, 0.5, -1.0]
    sx, sy = 2.0 + 1.0 - 1.0, 1.0 + 0.5 - 2.0        # 2.0, -0.5
    scores = ranker.learned_scores(rows, weights)
    assert list(scores) == ["x", "y"]
    assert scores["x"] == pytest.approx(1 / (1 + math.exp(sy - sx)))
    assert sum(scores.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="8 weights"):
        ranker.learned_scores(rows, [1.0])


def test_unfitted_weights_rank_as_the_unified_ranking():
    weights = ModelConfig().rank_feature_weights
    unified = rank((GEN, *SIDES[:2]), "unified", 0.2, 1.5, 10)
    rows = ranker.candidate_features(GEN, (*SIDES[:2], None), ["a", "b"], {"c": 3, "d": 1, "e": 7})
    assert rank((GEN, *SIDES[:2], rows), "learned", 0, 0, 10, weights) == unified == ["d", "a b", "c"]
    # what only the centroids list comes after them
    rows = ranker.candidate_features(GEN, SIDES, ["a", "b"], {"c": 3, "d": 1, "e": 7})
    assert rank((GEN, *SIDES[:2], rows), "learned", 0, 0, 10, weights) == unified + ["e"]


def test_fit_finds_the_feature_that_picks_the_gold_keyphrase():
    # two candidates per post, equal on every feature but `present`, which the gold keyphrase has
    features = [{"q": [0.5, 0, 0, 0, 0.0, 0, 0, 1.0], "p": [0.5, 0, 0, 0, 1.0, 0, 0, 1.0]}] * 6
    gold = [["P"]] * 6                                   # matched as the evaluator matches: lower-cased
    weights = ranker.fit(features, gold)
    assert weights[4] > 0 and weights == ranker.fit(features, gold)    # deterministic
    assert list(ranker.learned_scores(features[0], weights)) == ["p", "q"]
    # posts without a gold candidate, and candidates the evaluator drops, teach nothing
    assert ranker.fit([{"<unk>": [1.0] * 8}], [["<unk>"]]) == [0.0] * 8


def test_label_centroids_are_the_normalised_mean_embedding_of_their_posts():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    memory = KeyphraseMemory.build(TRAIN, N_WORDS, k=2, power=1.0, embeddings=embeddings, embedding_weight=0.25)
    # label 1: posts 0 and 1 -> (1, 1) / sqrt 2; label 2: post 1; label 3: post 2; label 0 (padding): none
    s = 1 / math.sqrt(2)
    assert memory.centroids.flatten().tolist() == pytest.approx([0, 0, s, s, 0, 1, 0.6, 0.8])
    assert memory.label_counts(5).tolist() == [0, 2, 1, 1, 0]
    p = memory.centroid_distribution(torch.tensor([[1.0, 0.0]]), 5)[0]
    logits = torch.tensor([s, 0.0, 0.6]) / CENTROID_TEMPERATURE
    assert p.tolist() == pytest.approx([0.0, *logits.softmax(0).tolist(), 0.0])
    # derived, not saved: a loaded memory derives them again
    loaded = KeyphraseMemory(N_WORDS, 2, 1.0)
    loaded.load_state_dict(memory.state_dict())
    assert "centroids" not in memory.state_dict() and torch.equal(loaded.centroids, memory.centroids)
    with pytest.raises(ValueError, match="sentence embeddings"):
        KeyphraseMemory.build(TRAIN, N_WORDS, k=2, power=1.0).centroid_distribution(torch.zeros(1, 2), 5)


def test_the_learned_ranking_needs_the_hybrid_memory():
    with pytest.raises(ValueError, match="memory_embedding"):
        ModelConfig(ranking="learned")


@pytest.fixture
def trained(tmp_path):
    """A tiny gen-cls-m3h-att-learned, trained for 2 epochs on shards with text embeddings."""
    from model.train import train
    torch.set_num_threads(1)
    data_dir = write_dataset(tmp_path / "data", text_embedding=TEXT_EMBEDDING)
    config = dataclasses.replace(CONFIGS["gen-cls-m3h-att-learned"], **TINY, epochs=2)
    train(config, data_dir, tmp_path / "run", seed=1, device="cpu", log=lambda m: None, progress=False)
    return data_dir, tmp_path / "run"


def test_learned_ranking_checkpoint_round_trip_ranks_identically(trained, tmp_path):
    from model.data import PostDataset
    from model.train import load_checkpoint, predict_ensemble, predict_split, split_candidates
    data_dir, run = trained
    model = load_checkpoint(run / "model.pt")
    history = [json.loads(line) for line in (run / "train.log").read_text().splitlines()]
    best = json.loads((run / "run.json").read_text())["best_epoch"]
    # the weights fitted at the best epoch are the checkpoint's
    assert model.config.rank_feature_weights == history[best - 1]["rank_feature_weights"]
    assert len(model.config.rank_feature_weights) == len(ranker.RANK_FEATURES)
    dataset = PostDataset(read_split(data_dir, "valid"), model.vocabs, model.config)
    predictions = predict_split(model, dataset, "cpu")
    assert (run / "pred_valid.txt").read_text() == "".join(";".join(p) + "\n" for p in predictions)
    assert predict_ensemble([model, load_checkpoint(run / "model.pt")], dataset, "cpu") == predictions
    # the candidates carry every keyphrase's features; other weights rank otherwise
    candidates = split_candidates(model, dataset, "cpu")
    assert all(set(rank_scores(c, "learned", 0, 0, model.config.rank_feature_weights)) == set(c[3])
               for c in candidates)
    assert len(predictions) == len(POSTS)
