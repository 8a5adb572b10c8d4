"""Unit tests of the model package on tiny fixture shards and tiny random configurations (CPU, seconds)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from model.beam import beam_search, predict_batch
from model.config import CONFIGS, ModelConfig, load_config
from model.data import BOS, EOS, PAD, PostDataset, Vocabularies, collate, read_split
from model.model import BiGRU, KeyphraseModel
from pipeline.manifests import dataset_manifest, split_manifest
from pipeline.shards import write_shard

# provenance of the seeded random unit vectors write_dataset puts in the `text_embedding` group when asked
TEXT_EMBEDDING = {"text_embedding_weights": "tiny", "text_embedding_weights_sha256": "ab" * 32,
                  "text_embedding_meta": json.dumps({"pooling": "mean", "normalize": True, "dim": 6, "max_length": 32,
                                                     "input": "tokens, then ocr_tokens"})}
TINY = dict(emb_dim=16, hidden=32, heads=2, head_dim=8, text_layers=2, dropout=0.0, emb_dropout=0.0)

POSTS = [  # tokens, keyphrases, ocr, attributes
    ("great goal by the striker tonight", "football", "final score", "man ball field"),
    ("new phone launch event today", "tech news", "", "phone hand table"),
    ("sunset over the quiet lake zorblat", "zorblat", "", "water sky sunset"),
    ("my cat sleeping on the sofa", "cats;caturday", "", "cat sofa"),
    ("vote today for a better future", "election", "vote now", "people sign"),
    ("baking bread this morning", "baking", "", "bread table"),
    ("the match ended in a draw", "football", "", "man field"),
    ("new album drops friday", "music", "", "man guitar"),
]


def write_dataset(root, posts=POSTS, splits=("train", "valid"), vgg=True, butd=False, random_weights=False,
                  image_every=2, text_embedding: dict | None = None):
    """`text_embedding`: the embedding group's provenance attributes; the vectors are seeded random unit rows."""
    for split in splits:
        rng = np.random.default_rng(0)          # the same posts and images in every split
        (root / split).mkdir(parents=True)
        n = len(posts)
        present = [i % image_every == 0 for i in range(n)]
        columns = {
            "post_id": [f"{split}-{i}" for i in range(n)], "text": [p[0] for p in posts],
            "tokens": [p[0] for p in posts], "keyphrases": [p[1] for p in posts], "hashtags": [""] * n,
            "image_url": [""] * n, "image_sha256": [""] * n, "image_path": [""] * n,
            "image_present": present, "image_size": [[8, 8] if p else [0, 0] for p in present],
            "ocr_raw": [p[2] for p in posts], "ocr_tokens": [p[2] for p in posts],
            "attributes": [p[3] for p in posts], "attribute_scores": np.full((n, 5), np.nan, np.float32),
        }
        if vgg:
            columns["vgg"] = rng.standard_normal((n, 49, 512)).astype(np.float16) * np.array(present)[:, None, None]
        if butd:
            columns.update({
                "butd": rng.standard_normal((n, 4, 2048)).astype(np.float16), "butd_boxes": np.zeros((n, 4, 4)),
                "butd_num_boxes": [3 if p else 0 for p in present], "butd_objects": np.zeros((n, 4)),
                "butd_object_scores": np.zeros((n, 4)), "butd_attributes": np.zeros((n, 4)),
                "butd_attribute_scores": np.zeros((n, 4))})
        attrs = {"split": split, "shard_index": 0, "source": "archive", "random_weights": random_weights}
        if text_embedding is not None:
            vectors = rng.standard_normal((n, json.loads(text_embedding["text_embedding_meta"])["dim"]))
            columns["text_embedding"] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            attrs.update(text_embedding)
        write_shard(root / split / "shard-00000.h5", columns, attrs)
    return write_manifests(root, splits)


def write_manifests(root, splits):
    """The split and dataset manifests the pipeline writes last (the model reads shards only through them)."""
    for split in splits:
        manifest = split_manifest(split, "archive", sorted((root / split).glob("shard-*.h5")))
        (root / split / "manifest.json").write_text(json.dumps(manifest))
    manifest = dataset_manifest(root, {s: root / s / "manifest.json" for s in splits}, [], source="archive")
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture
def data_dir(tmp_path):
    return write_dataset(tmp_path / "data")


def build(data_dir, config: ModelConfig, seed=0):
    split = read_split(data_dir, "train")
    vocabs = Vocabularies.build(split, config)
    dataset = PostDataset(split, vocabs, config)
    torch.manual_seed(seed)
    model = KeyphraseModel(config, vocabs, text_embedding_dim=dataset.text_embedding.shape[1]
                           if dataset.text_embedding is not None else None)
    return model, dataset, collate([dataset[i] for i in range(len(dataset))])


def test_bigru_equals_packed_pytorch_gru():
    torch.manual_seed(0)
    enc = BiGRU(5, 4, 2, 0.0)
    ref = torch.nn.GRU(5, 4, num_layers=2, bidirectional=True, batch_first=True)
    for layer in range(2):
        for suffix, grus in (("", enc.fwd), ("_reverse", enc.bwd)):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(grus[layer], f"{name}_l0").data.copy_(getattr(ref, f"{name}_l{layer}{suffix}").data)
    x, lengths = torch.randn(3, 6, 5), torch.tensor([6, 3, 1])
    out, final = enc(x, lengths)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    ref_out, h = ref(packed)
    ref_out, _ = torch.nn.utils.rnn.pad_packed_sequence(ref_out, batch_first=True, total_length=6)
    valid = (torch.arange(6)[None] < lengths[:, None]).unsqueeze(-1)
    torch.testing.assert_close(out * valid, ref_out)
    torch.testing.assert_close(final, torch.cat([h[-2], h[-1]], -1))


def test_encoding_ocr_after_sep_and_copy_ids(data_dir):
    config = ModelConfig(**TINY)
    model, dataset, batch = build(data_dir, config)
    vocabs = model.vocabs
    first = dataset.examples[0]
    words = [vocabs.words.words[i] for i in first.src]
    assert words == "great goal by the striker tonight <sep> final score".split()
    # "zorblat" is a keyphrase word, so it is a generator word; "sunset" is not: copy-only (OOV) in post 2
    third = dataset.examples[2]
    assert "sunset" in third.oov and "zorblat" not in third.oov
    j = third.oov.index("sunset")
    assert third.src_ext[words_index(vocabs, third, "sunset")] == len(vocabs.gen) + j
    # the target of "cats;caturday" is two keyphrases, each ending in <eos>
    assert [row[-1] for row in dataset.examples[3].dec_out] == [EOS, EOS]
    assert dataset.examples[3].dec_in[0][0] == BOS
    assert batch.dec_in.shape[0] == sum(len(p[1].split(";")) for p in POSTS)


def test_a_model_without_copy_has_unk_for_a_target_word_it_cannot_generate(tmp_path):
    """A DEV keyphrase word that no training keyphrase has ("sunset", which its post holds) is a copy target for a
    model that copies, and <unk> for one that cannot (gen-att): its loss must not index past its vocabulary."""
    from model.data import UNK

    train_dir = write_dataset(tmp_path / "train")
    valid_dir = write_dataset(tmp_path / "valid", splits=("valid",),
                              posts=[(p[0], "sunset" if i == 2 else p[1], p[2], p[3]) for i, p in enumerate(POSTS)])
    for name, copies in (("gen-copy", True), ("gen-att", False)):
        config = dataclasses.replace(CONFIGS[name], **TINY)
        vocabs = Vocabularies.build(read_split(train_dir, "train"), config)
        valid = PostDataset(read_split(valid_dir, "valid"), vocabs, config)
        sunset = valid.examples[2]
        assert "sunset" not in vocabs.gen.index and "sunset" in sunset.oov
        assert sunset.dec_out == [[len(vocabs.gen) + sunset.oov.index("sunset") if copies else UNK, EOS]], name
        torch.manual_seed(0)
        model = KeyphraseModel(config, vocabs)
        losses = model(collate([valid[i] for i in range(len(valid))]))
        assert torch.isfinite(losses["gen"]), name


def words_index(vocabs, example, word):
    return [vocabs.words.words[i] for i in example.src].index(word)


def test_shapes_and_absent_image_is_masked(data_dir):
    config = ModelConfig(**TINY)
    model, dataset, batch = build(data_dir, config)
    model.eval()
    enc = model.encode(batch)
    B, L = batch.src.shape
    assert enc.memory.shape == (B, L, 32) and enc.fuse.shape == (B, 32)
    assert enc.cls_logits.shape == (B, len(model.vocabs.labels))
    assert batch.vision.shape == (B, 49, 512) and batch.vision_mask[0].all() and not batch.vision_mask[1].any()
    # Changing the features of posts without an image changes nothing; changing a present image does.
    altered = dataclasses.replace(batch, vision=batch.vision.clone())
    altered.vision[1::2] = torch.randn_like(altered.vision[1::2]) * 100
    torch.testing.assert_close(model.encode(altered).fuse, enc.fuse)
    altered.vision[0] += 1.0
    assert not torch.allclose(model.encode(altered).fuse[0], enc.fuse[0])
    # Padding the source further changes nothing.
    padded = dataclasses.replace(batch, src=torch.nn.functional.pad(batch.src, (0, 3), value=PAD),
                                 src_ext=torch.nn.functional.pad(batch.src_ext, (0, 3), value=PAD))
    torch.testing.assert_close(model.encode(padded).fuse, enc.fuse)
    losses = model(batch)
    assert set(losses) == {"cls", "gen", "loss"} and torch.isfinite(losses["loss"])


def test_copy_and_aggregation_distributions(data_dir):
    config = ModelConfig(**TINY)
    model, dataset, batch = build(data_dir, config)
    model.eval()
    enc = model.encode(batch)
    N, T, V, L = batch.src.shape[0], 2, model.gen_size, batch.src.shape[1]
    p_vocab = torch.softmax(torch.randn(N, T, V), -1)
    p_gen = torch.full((N, T, 1), 0.25)
    attn = torch.softmax(torch.randn(N, T, L).masked_fill(~enc.src_mask.unsqueeze(1), float("-inf")), -1)
    for b in (0.0, 0.5):
        model.agg_weight.fill_(b)
        dist = model.output_distribution(p_vocab, p_gen, attn, enc, batch.n_oov)
        assert dist.shape == (N, T, V + batch.n_oov)
        torch.testing.assert_close(dist.sum(-1), torch.ones(N, T))
    # With p_gen = 0 and b = 0 all mass is copy mass: it lands on each source word's id, OOVs included.
    model.agg_weight.fill_(0.0)
    dist = model.output_distribution(p_vocab, torch.zeros(N, T, 1), attn, enc, batch.n_oov)
    post = 2
    pos = words_index(model.vocabs, dataset.examples[post], "sunset")
    oov_id = V + dataset.examples[post].oov.index("sunset")
    assert (batch.src_ext[post] == oov_id).sum() == 1          # "sunset" occurs once in the post
    torch.testing.assert_close(dist[post, :, oov_id], attn[post, :, pos])
    torch.testing.assert_close(dist[post].sum(-1), torch.ones(T))
    # With p_gen = 0 and b = 1 all mass is the classifier's: on the words of its top-K labels only.
    model.agg_weight.fill_(1.0)
    dist = model.output_distribution(p_vocab, torch.zeros(N, T, 1), attn, enc, batch.n_oov)
    top = enc.cls_logits.topk(config.agg_top_k, dim=1).indices
    for row in range(N):
        words = {w for label in top[row].tolist() if label for w in model.vocabs.label_gen_words[label]}
        mass_on_words = dist[row, :, sorted(words)].sum(-1)
        torch.testing.assert_close(mass_on_words, torch.ones(T))


def greedy(model, batch, max_len):
    enc = model.encode(batch)
    prev = torch.full((batch.src.shape[0],), BOS)
    state, out, score = enc.final, [], torch.zeros(batch.src.shape[0])
    for _ in range(max_len):
        logp, state = model.step(prev, state, enc, batch.n_oov)
        logp[:, [PAD, BOS, 3]] = float("-inf")
        best = logp.max(-1)
        out.append(best.indices)
        score += best.values
        prev = model.input_words(best.indices.unsqueeze(1), batch.oov_word_ids).squeeze(1)
    return torch.stack(out, 1)


def test_beam_one_equals_greedy(data_dir):
    config = ModelConfig(**TINY)
    model, dataset, batch = build(data_dir, config, seed=3)
    model.eval()
    model.agg_weight.fill_(0.5)
    greedy_tokens = greedy(model, batch, 4)
    hyps = beam_search(model, batch, beam=1, max_len=4)
    whole_paths = 0
    for row in range(batch.src.shape[0]):
        g = greedy_tokens[row].tolist()
        g = g[:g.index(EOS)] if EOS in g else g
        best = [t for t in hyps.tokens[row, 0].tolist() if t != PAD]
        # beam 1 finishes the greedy path at its first <eos>; the greedy path is the best finished one
        # unless an earlier <eos> had a better normalised score, in which case it is that prefix (never empty)
        assert best and g[:len(best)] == best
        whole_paths += best == g
    assert whole_paths > 0  # at least one post shows the whole greedy path, not only a prefix


def test_fused_vector_is_standardised_across_posts(data_dir):
    # Nearly identical pooled states (a shared offset plus a small per-post part, as at initialisation) must
    # reach the heads as unit-spread features, else the classifier sees one input for every post.
    config = dataclasses.replace(CONFIGS["cls-max"], **TINY)
    model, _, batch = build(data_dir, config)
    memory = 1.0 + 0.1 * torch.randn(len(POSTS), 6, config.hidden)
    mask = torch.ones(len(POSTS), 6, dtype=torch.bool)
    model.train()
    fused = model.fusion({"text": (memory, mask)})                               # [B, H]
    assert torch.allclose(fused.mean(0), torch.zeros(config.hidden), atol=1e-3)
    assert torch.allclose(fused.var(0, unbiased=False), torch.ones(config.hidden), atol=0.02)
    one = model.fusion({"text": (memory[:1], mask[:1])})                         # a batch of one post trains too
    assert one.shape == (1, config.hidden) and torch.isfinite(one).all()
    model.eval()
    assert torch.allclose(model.fusion({"text": (memory[:2], mask[:2])})[0],
                          model.fusion({"text": (memory[:1], mask[:1])})[0])    # eval: no batch dependence


def test_unified_ranking_mixes_normalised_beam_scores_with_label_probabilities():
    from model.beam import rank
    gen = [("a", -1.0, -0.5), ("b", -3.0, -1.0), ("c", -4.0, -2.0)]        # (kp, summed, normalised log P)
    cls = [("b", 0.5), ("d", 0.3), ("a", 0.01)]                             # (kp, probability), best first
    mem = [("e", 0.6), ("c", 0.4)]
    assert rank((gen, cls, mem), "generator", 0.3, 1.0, 10) == ["a", "b", "c"]
    assert rank((gen, cls, mem), "classifier", 0.3, 1.0, 2) == ["b", "d"]
    # weights 0 keep the beam's order; the labels only the other sides listed follow
    assert rank((gen, cls, mem), "unified", 0.0, 0.0, 10) == ["a", "b", "c", "d", "e"]
    # q_gen = softmax(-0.5, -1, -2) = (.5465, .3315, .1220)
    # cls 0.5: a .5515, b .5815, c .1220, d .15 -> b a d c
    assert rank((gen, cls, None), "unified", 0.5, 0.0, 10) == ["b", "a", "d", "c"]
    # + mem 1.0: a .5515, b .5815, c .5220, d .15, e .6 -> e b a c d
    assert rank((gen, cls, mem), "unified", 0.5, 1.0, 10) == ["e", "b", "a", "c", "d"]
    assert rank((gen, cls, mem), "unified", 0.5, 1.0, 2) == ["e", "b"]
    assert rank((gen, [], None), "unified", 0.5, 1.0, 10) == ["a", "b", "c"]
    assert rank(([], cls, mem), "unified", 0.5, 1.0, 10) == ["e", "c", "b", "d", "a"]


def test_label_candidates_cover_the_generator_hypotheses(data_dir):
    from model.beam import candidates_batch
    from model.memory import KeyphraseMemory
    config = dataclasses.replace(CONFIGS["gen-cls-m3h-att"], **TINY, n_best=2)
    model, dataset, batch = build(data_dir, config)
    model.memory = KeyphraseMemory.build(dataset.examples, len(model.vocabs.words), k=2, power=2.0)
    model.eval()
    labels = model.vocabs.labels
    probs = {"cls": model.encode(batch).cls_logits.softmax(-1),
             "mem": model.memory.label_distribution(batch.src, batch.attrs, len(labels))}
    for b, (gen, *sides, _) in enumerate(candidates_batch(model, batch)):
        for name, side in zip(("cls", "mem"), sides):
            kps = [kp for kp, _ in side]
            assert [p for _, p in side] == sorted((p for _, p in side), reverse=True)
            assert {kp for kp, _, _ in gen if labels.index.get(kp, 0)} <= set(kps)
            top2 = probs[name][b, 1:].topk(2)
            assert [p for _, p in side[:2]] == pytest.approx(top2.values.tolist())
            for kp, p in side:
                assert p == pytest.approx(probs[name][b, labels.index[kp]].item())


def test_all_named_configs_build_and_run(tmp_path):
    data_dir = write_dataset(tmp_path / "d", vgg=True, butd=True, text_embedding=TEXT_EMBEDDING)
    for name, base in CONFIGS.items():
        config = dataclasses.replace(base, **TINY)
        model, dataset, batch = build(data_dir, config)
        losses = model(batch)
        losses["loss"].backward()
        model.eval()
        ranked = predict_batch(model, batch)
        assert len(ranked) == len(POSTS), name
        assert all(len(r) <= config.n_best for r in ranked), name


def test_text_only_model_runs_without_vision_group(tmp_path):
    data_dir = write_dataset(tmp_path / "d", vgg=False)
    model, dataset, batch = build(data_dir, ModelConfig(**TINY))      # the default config names vgg
    assert dataset.vision is None and batch.vision is None
    assert torch.isfinite(model(batch)["loss"])


@pytest.mark.slow
def test_small_model_overfits_to_f1_100(tmp_path):
    from model.train import train
    torch.set_num_threads(1)
    # one keyphrase per post, so that F1@1 = 100 is reachable (with two gold keyphrases R@1 is at most 1/2)
    data_dir = write_dataset(tmp_path / "d", posts=[(p[0], p[1].split(";")[0], p[2], p[3]) for p in POSTS])
    config = dataclasses.replace(CONFIGS["gen-cls-m3h-att"], **{**TINY, "hidden": 64}, epochs=30, warmup_epochs=10,
                                 patience=30, lr=5e-3, batch_size=8)
    metrics = train(config, data_dir, tmp_path / "run", seed=1, device="cpu", log=lambda m: None, progress=False)
    assert metrics["valid"]["f1@1"] == pytest.approx(100.0)
    # the run records the code that made it: this checkout's commit
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["code"]["commit"] == \
        (head.stdout.strip() if head.returncode == 0 else None)


def test_a_run_records_the_commit_of_the_checkout_that_tracks_its_code(tmp_path):
    from model.train import code_revision

    repo = tmp_path / "repo"
    (repo / "build" / "frozen").mkdir(parents=True)
    (repo / ".gitignore").write_text("build/\n")
    (repo / "train.py").write_text("# tracked\n")
    (repo / "build" / "frozen" / "train.py").write_text("# an exported copy of other code\n")

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    git("add", ".gitignore", "train.py")
    git("commit", "-qm", "x")
    head = git("rev-parse", "HEAD")
    assert code_revision(repo / "train.py") == {"commit": head, "modified": False}
    # the checkout around an ignored copy has a HEAD, but it is not the copy's code
    assert code_revision(repo / "build" / "frozen" / "train.py") == {"commit": None}
    (repo / "train.py").write_text("# edited\n")
    assert code_revision(repo / "train.py") == {"commit": head, "modified": True}
    assert code_revision(tmp_path / "elsewhere.py") == {"commit": None}


def test_cli_train_predict_and_random_feature_refusal(tmp_path):
    from model.cli import predict, train
    data_dir = write_dataset(tmp_path / "d", random_weights=True)
    runner = CliRunner()
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"base": "gen-cls-m3h-att", **TINY}))
    args = ["--data", str(data_dir), "--config", str(cfg), "--out", str(tmp_path / "run"), "--epochs", "1",
            "--threads", "1", "--quiet"]
    refused = runner.invoke(train, args)
    assert refused.exit_code != 0 and "random" in refused.output.lower()
    ok = runner.invoke(train, args + ["--allow-random-features"])
    assert ok.exit_code == 0, ok.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) == {"valid"} and {"f1@1", "f1@3", "map@5"} <= set(metrics["valid"])
    assert len((tmp_path / "run" / "pred_valid.txt").read_text().splitlines()) == len(POSTS)
    out = tmp_path / "pred.txt"
    res = runner.invoke(predict, ["--model", str(tmp_path / "run" / "model.pt"), "--data", str(data_dir),
                                  "--split", "valid", "--out", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert out.read_text() == (tmp_path / "run" / "pred_valid.txt").read_text()


def test_load_config_rejects_unknown(tmp_path):
    with pytest.raises(ValueError, match="neither"):
        load_config("no-such-config")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hiden": 3}))
    with pytest.raises(ValueError, match="unknown config fields"):
        load_config(str(bad))


def test_glove_vectors_fill_the_rows_of_known_words(tmp_path):
    from model.train import load_glove
    glove = tmp_path / "glove.txt"
    glove.write_text("2 3\ncat 1 2 3\nunknownword 4 5 6\ndog 7 8 9\n<pad> 1 1 1\n")
    embedding = torch.zeros(4, 3)
    found = load_glove(glove, ["<pad>", "cat", "dog", "bird"], 3, embedding)
    assert found == 2   # cat and dog; the <pad> row is never overwritten, bird has no vector
    assert embedding.tolist() == [[0, 0, 0], [1, 2, 3], [7, 8, 9], [0, 0, 0]]
    with pytest.raises(ValueError, match="no 5-d vectors"):
        load_glove(glove, ["<pad>", "cat"], 5, torch.zeros(2, 5))


def test_state_dict_carries_the_aggregation_weight_and_the_memory(data_dir):
    from model.beam import candidates_batch
    from model.memory import KeyphraseMemory
    config = dataclasses.replace(CONFIGS["gen-cls-m3h-att"], **TINY)
    model, dataset, batch = build(data_dir, config)
    # k and power are the config's (a model rebuilt from its config has them)
    model.memory = KeyphraseMemory.build(dataset.examples, len(model.vocabs.words), config.memory_k,
                                         config.memory_power)
    model.agg_weight.fill_(0.3)
    state = model.state_dict()
    assert float(state["agg_weight"]) == 0.3 and state["memory.labels"].shape[0] == len(POSTS)
    fresh = KeyphraseModel(config, model.vocabs)        # an empty memory, b = 0: the saved tensors replace both
    assert float(fresh.agg_weight) == 0.0 and len(fresh.memory.labels) == 0
    fresh.load_state_dict(state)
    assert float(fresh.agg_weight) == 0.3 and len(fresh.memory.labels) == len(POSTS)
    model.eval(), fresh.eval()
    assert candidates_batch(fresh, batch) == candidates_batch(model, batch)
    moved = fresh.to(torch.float64)                    # .to() reaches the memory's buffers with the rest
    assert moved.memory.idf.dtype == torch.float64 and moved.agg_weight.dtype == torch.float64
