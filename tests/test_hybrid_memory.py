"""The hybrid keyphrase memory (TF-IDF + sentence-embedding similarity) and seed ensembles."""
from __future__ import annotations

import dataclasses
import math
import os
import sys

import h5py
import pytest
import torch

from model.config import CONFIGS
from model.data import pad_rows, read_split
from model.memory import KeyphraseMemory

sys.path.insert(0, os.path.dirname(__file__))
from test_memory import N_WORDS, TRAIN  # noqa: E402
from test_model import POSTS, TEXT_EMBEDDING, TINY, write_dataset, write_manifests  # noqa: E402

def test_hybrid_similarity_is_the_weighted_sum_of_both():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    memory = KeyphraseMemory.build(TRAIN, N_WORDS, k=2, power=1.0, embeddings=embeddings, embedding_weight=0.25)
    query, attrs, embedding = pad_rows([[5, 6]]), pad_rows([[]]), torch.tensor([[1.0, 0.0]])
    # by hand: idf(5) = idf(6) = log(4/3) (in 2 of 4 posts), idf(7) = log(4/2); the query (words 5, 6) against
    # posts 0 ("5 6 7") and 1 ("5 6 8"): cosine sqrt(2) a / sqrt(2 a^2 + b^2); posts 2 and 3 share no word
    a, b = math.log(4 / 3), math.log(2)
    tfidf = [math.sqrt(2) * a / math.sqrt(2 * a * a + b * b)] * 2 + [0.0, 0.0]
    cosine = [1.0, 0.0, 0.6, 1.0]
    expected = [0.75 * t + 0.25 * c for t, c in zip(tfidf, cosine)]
    assert memory.similarity(query, attrs, embedding)[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert memory.similarity(query, attrs, embedding, embedding_weight=0.0)[0].tolist() == pytest.approx(tfidf)
    # the 2 nearest: post 0 (label 1) and post 1 (labels 1 and 2), each voting with its similarity
    p = memory.label_distribution(query, attrs, 4, embedding)[0]
    s0, s1 = expected[0], expected[1]
    assert p.tolist() == pytest.approx([0.0, (s0 + s1) / (s0 + 2 * s1), s1 / (s0 + 2 * s1), 0.0], abs=1e-6)
    # the embeddings alone find post 3, which shares no word with the query
    p_embedding = memory.label_distribution(query, attrs, 4, embedding, embedding_weight=1.0)[0]
    assert p_embedding[3] == 0.0 and p_embedding[1] == pytest.approx(1.0)   # post 3's keyphrase is no label
    with pytest.raises(ValueError, match="text_embedding"):
        memory.label_distribution(query, attrs, 4)


def test_negative_similarity_casts_no_vote():
    embeddings = torch.tensor([[-1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    memory = KeyphraseMemory.build(TRAIN, N_WORDS, k=4, power=2.0, embeddings=embeddings, embedding_weight=1.0)
    p = memory.label_distribution(pad_rows([[9]]), pad_rows([[]]), 4, torch.tensor([[1.0, 0.0]]))
    assert p.tolist() == [[0.0] * 4]


@pytest.fixture
def trained(tmp_path):
    """A tiny full model with the hybrid memory, trained for 2 epochs on shards with text embeddings."""
    from model.train import train
    torch.set_num_threads(1)
    data_dir = write_dataset(tmp_path / "data", text_embedding=TEXT_EMBEDDING)
    config = dataclasses.replace(CONFIGS["gen-cls-m3h-att"], **TINY, memory_embedding=True, epochs=2)
    logs = []
    train(config, data_dir, tmp_path / "run", seed=1, device="cpu", log=logs.append, progress=False)
    return data_dir, tmp_path / "run", logs


def test_hybrid_memory_checkpoint_round_trip_ranks_identically(trained):
    from model.data import PostDataset
    from model.train import MEMORY_EMBEDDING_GRID, load_checkpoint, predict_split
    data_dir, run, logs = trained
    assert any(line.startswith("memory embedding weight chosen on DEV") for line in logs)
    model = load_checkpoint(run / "model.pt")
    train, valid = read_split(data_dir, "train"), read_split(data_dir, "valid")
    assert model.config.memory_embedding and model.config.memory_embedding_weight in MEMORY_EMBEDDING_GRID
    assert model.memory.embedding_weight == model.config.memory_embedding_weight
    assert torch.equal(model.memory.embeddings, torch.from_numpy(train.text_embedding))
    assert model.memory.embedding_provenance == train.text_embedding_provenance
    predictions = predict_split(model, PostDataset(valid, model.vocabs, model.config), "cpu")
    assert (run / "pred_valid.txt").read_text() == "".join(";".join(p) + "\n" for p in predictions)


def test_queries_embedded_by_another_model_are_refused(trained, tmp_path):
    from model.data import PostDataset
    from model.train import load_checkpoint, predict_split
    data_dir, run, _ = trained
    model = load_checkpoint(run / "model.pt")
    model.memory.embedding_weight = 0.5            # whatever DEV chose: a hybrid memory compares embeddings
    with h5py.File(data_dir / "valid" / "shard-00000.h5", "a") as f:
        f.attrs["text_embedding_weights_sha256"] = "cd" * 32
    write_manifests(data_dir, ("train", "valid"))  # as if built so (the shard's checksum changed)
    valid = read_split(data_dir, "valid")
    with pytest.raises(ValueError, match="not comparable"):
        predict_split(model, PostDataset(valid, model.vocabs, model.config), "cpu")
    no_embeddings = write_dataset(tmp_path / "plain")
    with pytest.raises(ValueError, match="no text_embedding group"):
        PostDataset(read_split(no_embeddings, "valid"), model.vocabs, model.config)


def test_ensemble_of_one_checkpoint_equals_that_checkpoint(trained, tmp_path):
    from click.testing import CliRunner

    from model.cli import predict
    from model.data import PostDataset
    from model.train import check_one_configuration, load_checkpoint, predict_ensemble, predict_split
    data_dir, run, _ = trained
    model = load_checkpoint(run / "model.pt")
    dataset = PostDataset(read_split(data_dir, "valid"), model.vocabs, model.config)
    alone = predict_split(model, dataset, "cpu")
    assert predict_ensemble([model], dataset, "cpu") == alone
    assert predict_ensemble([model, load_checkpoint(run / "model.pt")], dataset, "cpu") == alone
    other = load_checkpoint(run / "model.pt")
    other.config = dataclasses.replace(other.config, memory_k=5)
    with pytest.raises(ValueError, match="memory_k"):
        check_one_configuration([model, other], ["a", "b"])
    out = tmp_path / "pred.txt"
    result = CliRunner().invoke(predict, ["--model", str(run / "model.pt"), "--model", str(run / "model.pt"),
                                          "--data", str(data_dir), "--split", "valid", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == (run / "pred_valid.txt").read_text()
    assert len(out.read_text().splitlines()) == len(POSTS)
