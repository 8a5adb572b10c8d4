"""Attribute vocabulary (offline POS tagging of captions), ResNet multi-label training and top-5 prediction."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import attributes
from pipeline.precision import resolve_precision
from pipeline.weights import WeightsNotFoundError


def test_tagged_words_keep_nouns_and_adjectives_only():
    tag = attributes.pos_tagger()
    assert attributes.tagged_words("A man riding a red bike down the busy street", tag) >= {"red", "bike", "street", "busy"}
    assert not attributes.tagged_words("A man riding a red bike down the busy street", tag) & {"a", "down", "the"}


def test_vocabulary_ranks_by_images_then_alphabetically():
    captions = {"1.jpg": ["a red cup on a table", "a red mug"], "2.jpg": ["a red car on the road"],
                "3.jpg": ["a small dog on the road"]}
    vocabulary, per_image = attributes.build_vocabulary(captions, 6, attributes.pos_tagger())
    assert vocabulary[:2] == ["red", "road"]            # 2 images each, then alphabetical
    assert per_image["1.jpg"] == {"red", "cup", "table", "mug"}
    assert len(vocabulary) == 6
    with pytest.raises(ValueError, match="at least 5"):
        attributes.build_vocabulary({"1.jpg": ["a dog"]}, 10, attributes.pos_tagger())


def test_captions_json_with_unknown_image_is_rejected(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                "annotations": [{"id": 1, "image_id": 2, "caption": "a dog"}]}))
    with pytest.raises(ValueError, match="unknown image id 2"):
        attributes.read_captions(path)


def test_resnet152_real_architecture_forward():
    model, info = attributes.build_model("resnet152", "random:0", 12)
    assert info.random and sum(p.numel() for p in model.parameters()) > 58_000_000
    with torch.inference_mode():
        logits = model.eval()(attributes.to_tensor(Image.new("RGB", (300, 200), "red"), 96)[None])
    assert logits.shape == (1, 12)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("attributes")
    captions = attributes.write_sample_captioned_set(directory, copies=1)
    config = attributes.AttributeConfig(arch="resnet18", backbone_weights="random:1", vocab_size=40,
                                        image_size=32, epochs=5, batch_size=8, lr=3e-3, seed=0)
    epochs = []
    summary = attributes.train(config, captions, directory / "images", directory / "model.pt", device="cpu",
                               progress=lambda e, n, loss: epochs.append((e, n)))
    return directory, summary, epochs


def test_training_writes_a_checkpoint_and_the_loss_falls(trained):
    directory, summary, epochs = trained
    assert summary["images"] == 8 and summary["captions"] == 16 and summary["vocabulary_size"] == 40
    assert epochs == [(e, 5) for e in range(1, 6)]
    assert summary["epoch_losses"][-1] < 0.5 * summary["epoch_losses"][0]
    state = torch.load(directory / "model.pt", weights_only=True)
    assert state["backbone_weights"] == "random(seed=1)" and len(state["vocabulary"]) == 40


def test_predictor_top5_words_scores_and_provenance(trained):
    directory, _, _ = trained
    predictor = attributes.AttributePredictor(directory / "model.pt", device="cpu")
    images = [Image.open(directory / "images" / name) for name in ("chelsea-0.jpg", "rocket-0.jpg")]
    words, scores = predictor.predict(images)
    assert len(words) == 2 and scores.shape == (2, 5) and scores.dtype == np.float32
    for line, row in zip(words, scores):
        assert len(line.split()) == 5 and set(line.split()) <= set(predictor.vocabulary)
        assert np.all(np.diff(row) <= 1e-6) and np.all((row >= 0) & (row <= 1))
    assert predictor.random
    meta = json.loads(predictor.provenance_attrs["attributes_meta"])
    assert meta["arch"] == "resnet18" and meta["vocabulary_size"] == 40
    assert len(predictor.provenance_attrs["attributes_weights_sha256"]) == 64
    auto = resolve_precision("auto", torch.device("cpu"))
    assert (meta["precision"], meta["precision_requested"]) == (auto.name, "auto")
    # Forced bf16 still runs: its top-5 scores are close to those of the precision auto chose.
    bf16 = attributes.AttributePredictor(directory / "model.pt", device="cpu", precision="bf16")
    assert json.loads(bf16.provenance_attrs["attributes_meta"])["precision"] == "bf16"
    np.testing.assert_allclose(bf16.predict(images)[1], scores, atol=0.02)


def test_missing_checkpoint_names_the_task_that_makes_it(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="TrainAttributePredictor"):
        attributes.AttributePredictor(tmp_path / "model.pt")
