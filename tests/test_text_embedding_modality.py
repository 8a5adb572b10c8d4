"""The posts' sentence embeddings as a modality of the encoder (`text_embedding_modality`), on tiny random
configurations and fixture shards with seeded random unit embeddings."""
from __future__ import annotations

import dataclasses
import os
import sys

import h5py
import pytest
import torch

from model.config import CONFIGS, ModelConfig
from model.data import read_split
from model.model import KeyphraseModel

sys.path.insert(0, os.path.dirname(__file__))
from test_model import POSTS, TEXT_EMBEDDING, TINY, build, write_dataset, write_manifests  # noqa: E402

DIM = 6     # TEXT_EMBEDDING's "dim"


@pytest.fixture
def data_dir(tmp_path):
    return write_dataset(tmp_path / "data", text_embedding=TEXT_EMBEDDING)


def sentence_config(**changes) -> ModelConfig:
    return dataclasses.replace(CONFIGS["gen-cls-m3h-att"], **TINY, text_embedding_modality=True, **changes)


def test_shapes_and_the_embedding_changes_the_output(data_dir):
    model, dataset, batch = build(data_dir, sentence_config())
    model.eval()
    B = len(POSTS)
    assert batch.text_embedding.shape == (B, DIM)
    x, mask = model.sentence(batch.text_embedding)
    assert x.shape == (B, 1, 32) and mask.shape == (B, 1) and mask.all()
    # its terms in c_fuse: its own projection, the pooled text over it, and it over the words
    assert {"sentence->sentence", "text->sentence", "sentence->text"} <= set(model.fusion.proj)
    enc = model.encode(batch)
    assert enc.fuse.shape == (B, 32) and enc.cls_logits.shape == (B, len(model.vocabs.labels))
    # another embedding for post 0 changes its fused vector and its label scores, and no other post's
    altered = dataclasses.replace(batch, text_embedding=batch.text_embedding.clone())
    altered.text_embedding[0] = -altered.text_embedding[0]
    changed = model.encode(altered)
    assert not torch.allclose(changed.fuse[0], enc.fuse[0])
    assert not torch.allclose(changed.cls_logits[0], enc.cls_logits[0])
    torch.testing.assert_close(changed.fuse[1:], enc.fuse[1:])
    # the gradient reaches the projection in training
    model.train()
    model(batch)["loss"].backward()
    assert model.sentence.proj.weight.grad.abs().sum() > 0


def test_absent_embedding_is_masked_out(data_dir):
    model, dataset, batch = build(data_dir, sentence_config())
    model.eval()
    none = model.encode(dataclasses.replace(batch, text_embedding=None))      # no embedding in the batch
    zeros = dataclasses.replace(batch, text_embedding=torch.zeros_like(batch.text_embedding))
    torch.testing.assert_close(model.encode(zeros).fuse, none.fuse)
    # a post whose row is zero fuses as if the batch had none; a post with its embedding does not
    one_absent = dataclasses.replace(batch, text_embedding=batch.text_embedding.clone())
    one_absent.text_embedding[2] = 0.0
    enc = model.encode(one_absent)
    torch.testing.assert_close(enc.fuse[2], none.fuse[2])
    assert not torch.allclose(enc.fuse[0], none.fuse[0])
    # without the modality's terms c_fuse is what the same weights give for the text, vision and attributes alone
    for key in ("sentence->sentence", "text->sentence", "sentence->text"):
        model.fusion.proj[key].weight.data.zero_()
    torch.testing.assert_close(model.encode(batch).fuse, none.fuse)


def test_config_needs_the_text_and_the_split_needs_the_group(tmp_path):
    with pytest.raises(ValueError, match="use_text"):
        dataclasses.replace(CONFIGS["cls-vgg-max"], text_embedding_modality=True)
    assert sentence_config(memory_embedding=False).uses_text_embedding
    plain = write_dataset(tmp_path / "plain")
    with pytest.raises(ValueError, match="no text_embedding group"):
        build(plain, sentence_config())
    model, _, _ = build(write_dataset(tmp_path / "emb", text_embedding=TEXT_EMBEDDING), sentence_config())
    with pytest.raises(ValueError, match="text_embedding_dim"):
        KeyphraseModel(sentence_config(), model.vocabs)       # the embeddings' size is not known


@pytest.fixture
def trained(data_dir, tmp_path):
    """A tiny model with the sentence modality, trained for 2 epochs."""
    from model.train import train
    torch.set_num_threads(1)
    train(sentence_config(epochs=2), data_dir, tmp_path / "run", seed=1, device="cpu", log=lambda m: None,
          progress=False)
    return data_dir, tmp_path / "run"


def test_checkpoint_round_trip_predicts_identically_and_refuses_other_embeddings(trained):
    from model.data import PostDataset
    from model.train import load_checkpoint, predict_split
    data_dir, run = trained
    model = load_checkpoint(run / "model.pt")
    train = read_split(data_dir, "train")
    assert model.config.text_embedding_modality and model.text_embedding_dim == DIM
    assert model.sentence.provenance == train.text_embedding_provenance
    valid = read_split(data_dir, "valid")
    predictions = predict_split(model, PostDataset(valid, model.vocabs, model.config), "cpu")
    assert (run / "pred_valid.txt").read_text() == "".join(";".join(p) + "\n" for p in predictions)
    # posts embedded by another encoder are refused, not read as comparable
    with h5py.File(data_dir / "valid" / "shard-00000.h5", "a") as f:
        f.attrs["text_embedding_weights_sha256"] = "cd" * 32
    write_manifests(data_dir, ("train", "valid"))
    with pytest.raises(ValueError, match="not comparable"):
        predict_split(model, PostDataset(read_split(data_dir, "valid"), model.vocabs, model.config), "cpu")


def test_explain_shows_the_attention_from_and_to_the_sentence_embedding(trained, tmp_path):
    from PIL import Image

    from model.data import PostDataset
    from model.explain import draw, explain
    from model.train import load_checkpoint
    data_dir, run = trained
    model = load_checkpoint(run / "model.pt")
    dataset = PostDataset(read_split(data_dir, "valid"), model.vocabs, model.config)
    explanation = explain(model, dataset, 1)                     # post 1 has no image
    attention = explanation["attention"]
    assert set(attention) == {"text->attributes", "attributes->text", "text->sentence", "sentence->text"}
    assert attention["text->sentence"][0] == [[1.0]] * model.config.heads     # one position holds all the weight
    assert len(attention["sentence->text"][0][0]) == len(explanation["tokens"])
    with Image.open(draw(explanation, tmp_path / "post.png")) as image:
        assert image.size[1] == 260 * 4
