"""The three topic / bilinear baselines of the paper's Table 2 (CLS-TMN, GEN-TOPIC, CLS-BAN) on tiny configs."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from model.ban import BilinearAttentionFusion
from model.config import CONFIGS
from model.data import PAD
from model.topic import NeuralTopicModel, bow_vocabulary
from test_model import TINY, build, write_dataset

TINY_TOPICS = dict(topics=4, topic_memory_dim=8, ban_glimpses=2)


def tiny(name: str, **changes):
    return dataclasses.replace(CONFIGS[name], **TINY, **TINY_TOPICS, **changes)


@pytest.fixture
def data_dir(tmp_path):
    return write_dataset(tmp_path / "data")


def test_named_configs_follow_the_papers():
    tmn, topic, ban = CONFIGS["cls-tmn"], CONFIGS["gen-topic"], CONFIGS["cls-ban"]
    assert tmn.topics == topic.topics == 50 and tmn.topic_memory and not tmn.generator and tmn.vision == "none"
    assert topic.topic_decoder and topic.copy and not topic.classifier and topic.ranking == "generator"
    assert ban.fusion == "ban" and ban.vision == "vgg" and ban.ban_glimpses == 8 and ban.ban_rank == 3
    with pytest.raises(ValueError, match="topics > 0"):
        dataclasses.replace(CONFIGS["gen-copy"], topic_decoder=True)
    with pytest.raises(ValueError, match="needs both"):
        dataclasses.replace(CONFIGS["cls-max"], fusion="ban")


def test_bag_of_words_skips_specials_and_stop_words():
    words = ["<pad>", "<bos>", "<eos>", "<unk>", "<sep>", "the", "goal", "<number>", "!", "cat", "dog"]
    index = bow_vocabulary(words, size=2)
    assert index.tolist() == [-1] * 5 + [-1, 0, -1, -1, 1, -1]         # "dog" is past the two columns


def test_topic_model_counts_and_elbo(data_dir):
    model, dataset, batch = build(data_dir, tiny("gen-topic"))
    words = model.vocabs.words.words
    bow = model.bag_of_words(batch.src)
    post = dataset.examples[0]
    expected = torch.zeros(bow.shape[1])
    for i in post.src:
        if model.bow_index[i] >= 0:
            expected[model.bow_index[i]] += 1
    torch.testing.assert_close(bow[0], expected)
    assert "the" not in [w for i, w in enumerate(words) if model.bow_index[i] >= 0]
    topics = model.topic_model.topic_words()
    torch.testing.assert_close(topics.sum(-1), torch.ones(4))
    # the ELBO falls when the topic model alone is fitted to the posts' words
    torch.manual_seed(0)
    ntm = NeuralTopicModel(bow.shape[1], 4)
    opt = torch.optim.Adam(ntm.parameters(), lr=1e-2)
    ntm.eval()
    before = ntm(bow)[-1].mean().item()
    ntm.train()
    for _ in range(100):
        opt.zero_grad()
        ntm(bow)[-1].mean().backward()
        opt.step()
    ntm.eval()
    assert ntm(bow)[-1].mean().item() < before - 1.0


def test_gen_topic_decoder_hears_the_topics(data_dir):
    model, dataset, batch = build(data_dir, tiny("gen-topic"))
    model.eval()
    losses = model(batch)
    assert set(losses) == {"gen", "topic", "loss"}
    assert losses["loss"].item() == pytest.approx(losses["gen"].item() + losses["topic"].item(), rel=1e-5)
    enc = model.encode(batch)
    assert enc.topic.shape == (len(dataset), 4) and enc.cls_logits is None
    emb = model.embedding(torch.full((len(dataset), 1), 1))
    p_vocab, *_ = model.decoder(emb, enc.final, enc)
    shifted = dataclasses.replace(enc, topic=enc.topic + 1.0)
    assert not torch.allclose(model.decoder(emb, enc.final, shifted)[0], p_vocab)
    losses["loss"].backward()
    assert model.topic_model.enc1.weight.grad.abs().sum() > 0   # the generation loss trains the topic model too


def test_cls_tmn_reads_words_through_the_topic_memory(data_dir):
    model, dataset, batch = build(data_dir, tiny("cls-tmn"))
    assert model.encoder is None                                  # no GRU: the topic memory is the text encoder
    model.eval()
    enc = model.encode(batch)
    assert enc.cls_logits.shape == (len(dataset), len(model.vocabs.labels)) and enc.memory is None
    # padding the source changes nothing (padding positions are masked out of the memory and the pooling)
    padded = dataclasses.replace(batch, src=torch.nn.functional.pad(batch.src, (0, 3), value=PAD))
    torch.testing.assert_close(model.encode(padded).cls_logits, enc.cls_logits)
    # the topic memory is read: other topic-word weights give other scores
    with torch.no_grad():
        model.topic_model.decoder.weight.add_(torch.randn_like(model.topic_model.decoder.weight))
    assert not torch.allclose(model.encode(batch).cls_logits, enc.cls_logits)
    model.train()
    losses = model(batch)
    assert set(losses) == {"cls", "topic", "loss"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert model.topic_memory.topics.weight.grad.abs().sum() > 0


def cue_word_posts(labels: int = 6, posts_per_label: int = 12, seed: int = 0):
    """Posts whose keyphrase is told by one of its label's three cue words among five filler words drawn from a
    pool shared by every label: a classifier that reads the words can tell the labels apart."""
    rng = np.random.default_rng(seed)
    filler = [f"filler{i}" for i in range(40)]
    posts = []
    for n in range(labels * posts_per_label):
        label = n % labels
        words = list(rng.choice(filler, 5, replace=False)) + [f"cue{label}x{rng.integers(3)}"]
        rng.shuffle(words)
        posts.append((" ".join(words), f"label{label}", "", ""))
    return posts


def test_cls_tmn_learns_from_the_words(tmp_path):
    """The classifier fits labels that the words tell: its loss falls far below the label prior's entropy and it
    gets the training posts right. (It stayed at the prior when the topic memory read the topic model's sample of
    z, whose noise drowned the words' features.)"""
    posts = cue_word_posts()
    data_dir = write_dataset(tmp_path / "data", posts=posts, vgg=False)
    model, dataset, batch = build(data_dir, tiny("cls-tmn"), seed=1)
    torch.set_num_threads(1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for _ in range(80):
        losses = model(batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = losses["cls"].item() if first is None else first
    prior = math.log(6)                                   # six labels, equally frequent
    assert first > 0.9 * prior
    assert losses["cls"].item() < 0.05 * prior             # the sampled z left it at 0.27 x the prior
    model.eval()
    labels = model.encode(batch).cls_logits.argmax(1)
    gold = batch.labels[torch.argsort(batch.kp_post)]     # one keyphrase per post
    assert (labels == gold).float().mean().item() >= 0.9


def test_bilinear_attention_maps_and_masks():
    torch.manual_seed(0)
    ban = BilinearAttentionFusion(8, glimpses=3, k=2).eval()
    x, y = torch.randn(2, 5, 8), torch.randn(2, 4, 8)
    x_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    y_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    att = ban.attention_maps(x, x_mask, y, y_mask)
    assert att.shape == (2, 3, 5, 4)
    torch.testing.assert_close(att.sum((2, 3)), torch.ones(2, 3))
    assert (att[0][:, 3:, :] == 0).all() and (att[0][:, :, 2:] == 0).all()
    out = ban(x, x_mask, y, y_mask)
    # masked regions and words do not matter
    x2, y2 = x.clone(), y.clone()
    x2[0, 3:] += 5.0
    y2[0, 2:] += 5.0
    torch.testing.assert_close(ban(x2, x_mask, y2, y_mask), out)


def test_cls_ban_fuses_text_and_image_and_masks_absent_images(data_dir):
    model, dataset, batch = build(data_dir, tiny("cls-ban"))
    model.eval()
    enc = model.encode(batch)
    assert "text<->vision" in model.fusion.proj and enc.cls_logits.shape[0] == len(dataset)
    altered = dataclasses.replace(batch, vision=batch.vision.clone())
    altered.vision[1::2] = torch.randn_like(altered.vision[1::2]) * 100    # posts 1, 3, ... have no image
    torch.testing.assert_close(model.encode(altered).cls_logits, enc.cls_logits)
    altered.vision[0] += 1.0
    assert not torch.allclose(model.encode(altered).cls_logits[0], enc.cls_logits[0])
    assert torch.isfinite(model(batch)["loss"])


@pytest.mark.parametrize("name", ["cls-tmn", "gen-topic", "cls-ban"])
def test_baseline_trains_saves_and_reloads(tmp_path, data_dir, name):
    from model.data import PostDataset, read_split
    from model.train import load_checkpoint, predict_split, train

    torch.set_num_threads(1)
    config = tiny(name, epochs=2, beam=3, batch_size=4)
    metrics = train(config, data_dir, tmp_path / "run", seed=1, device="cpu", log=lambda m: None, progress=False)
    assert 0.0 <= metrics["valid"]["f1@1"] <= 100.0
    model = load_checkpoint(tmp_path / "run" / "model.pt")
    dataset = PostDataset(read_split(data_dir, "valid"), model.vocabs, model.config)
    written = (tmp_path / "run" / "pred_valid.txt").read_text().splitlines()
    assert [";".join(p) for p in predict_split(model, dataset, "cpu", 4)] == written
