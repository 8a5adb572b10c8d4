"""Batched beam search and the final ranking of keyphrases.

All posts of a batch and all their beams advance together as one [B * K] row block on the device; the only
per-post Python work is turning the finished id sequences into strings at the end.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from model.data import BOS, EOS, PAD, UNK, Batch
from model.model import KeyphraseModel
from model.ranker import candidate_features, learned_scores


@dataclass
class Hypotheses:
    """Finished hypotheses of a batch, best first per post: token ids [B, S, T], summed log P [B, S],
    length-normalised log P [B, S] (-inf marks empty slots)."""
    tokens: torch.Tensor
    logp: torch.Tensor
    norm: torch.Tensor


@torch.no_grad()
def beam_search(model: KeyphraseModel, batch: Batch, beam: int, max_len: int, enc=None) -> Hypotheses:
    """Every hypothesis that emits <eos> at step t is finished with score sum log P / (t + 1) (the authors'
    normalisation, <eos> counted); beams still open after max_len steps are finished as they are."""
    enc = enc if enc is not None else model.encode(batch)
    B, K = batch.src.shape[0], beam
    device = batch.src.device
    rows = torch.arange(B, device=device).repeat_interleave(K)             # [B*K] beam row -> post
    enc_k = enc.select(rows)
    oov_k = batch.oov_word_ids.index_select(0, rows)
    state = enc_k.final
    prev = torch.full((B * K,), BOS, dtype=torch.long, device=device)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0                                                      # step 0 expands beam 0 only
    seqs = torch.zeros(B * K, 0, dtype=torch.long, device=device)
    banned = torch.tensor([PAD, BOS, UNK], device=device)                  # never emitted; <unk> would be dropped
    fin_tokens, fin_logp, fin_norm = [], [], []
    for t in range(max_len):
        logp, state = model.step(prev, state, enc_k, batch.n_oov)          # [B*K, V]
        logp.index_fill_(1, banned, float("-inf"))
        V = logp.shape[1]                                                  # generator vocab (+ copy-only words)
        cand = scores.view(-1, 1) + logp                                   # [B*K, V]
        ended = cand[:, EOS].view(B, K)
        fin_tokens.append(torch.nn.functional.pad(seqs, (0, max_len - t), value=PAD).view(B, K, max_len))
        fin_logp.append(ended)
        fin_norm.append(ended / (t + 1))
        cand[:, EOS] = float("-inf")
        scores, flat = cand.view(B, K * V).topk(K, dim=1)                  # [B, K]
        source = (torch.arange(B, device=device).unsqueeze(1) * K + flat // V).view(-1)
        token = (flat % V).view(-1, 1)
        seqs = torch.cat([seqs.index_select(0, source), token], 1)
        state = state.index_select(0, source)
        prev = model.input_words(token, oov_k).squeeze(1)
        if torch.isinf(scores).all():
            break
    fin_tokens.append(torch.nn.functional.pad(seqs, (0, max_len - seqs.shape[1]), value=PAD).view(B, K, max_len))
    fin_logp.append(scores)
    fin_norm.append(scores / seqs.shape[1])
    tokens, logp, norm = torch.cat(fin_tokens, 1), torch.cat(fin_logp, 1), torch.cat(fin_norm, 1)
    norm, order = norm.sort(dim=1, descending=True)
    return Hypotheses(tokens.gather(1, order.unsqueeze(-1).expand_as(tokens)), logp.gather(1, order), norm)


def hypothesis_strings(model: KeyphraseModel, hyps: Hypotheses, oov: list[list[str]], limit: int):
    """Per post: [(keyphrase, summed log P, normalised log P)], best first, duplicates removed, at most `limit`."""
    words, n_gen = model.vocabs.gen.words, model.gen_size
    tokens, logp, norm = hyps.tokens.tolist(), hyps.logp.tolist(), hyps.norm.tolist()
    out = []
    for b, post_oov in enumerate(oov):
        seen, ranked = set(), []
        for seq, lp, nm in zip(tokens[b], logp[b], norm[b]):
            if nm == float("-inf") or len(ranked) >= limit:
                break
            kp = " ".join(words[i] if i < n_gen else post_oov[i - n_gen] for i in seq if i != PAD)
            if kp and kp not in seen:
                seen.add(kp)
                ranked.append((kp, lp, nm))
        out.append(ranked)
    return out


def label_candidates(probs: torch.Tensor, labels, n_best: int, gen_ranked: list) -> list:
    """Per post: [(label, probability)] best first: the top n_best labels of `probs` [B, C] plus every generator
    hypothesis that is a label, so that the unified ranking has that side's score for those too."""
    probs = probs.clone()
    probs[:, 0] = 0.0                                                       # label 0 is not a keyphrase
    top = probs.topk(min(n_best, probs.shape[1]), dim=1).indices.tolist()
    out = []
    for b, post_top in enumerate(top):
        ids = dict.fromkeys(i for i in post_top if i != 0)
        if gen_ranked[b]:
            ids.update(dict.fromkeys(labels.index[kp] for kp, _, _ in gen_ranked[b] if labels.index.get(kp, 0)))
        ids = list(ids)
        p = probs[b, ids].tolist()
        out.append(sorted(zip((labels.words[i] for i in ids), p), key=lambda x: -x[1]))
    return out


def source_words(model: KeyphraseModel, batch: Batch) -> list[list[str]]:
    """Per post: the tokens the encoder read (post, then OCR), as strings."""
    words, n_gen = model.vocabs.gen.words, model.gen_size
    return [[words[i] if i < n_gen else oov[i - n_gen] for i in ids[:length]]
            for ids, length, oov in zip(batch.src_ext.tolist(), batch.src_len.tolist(), batch.oov)]


Candidates = tuple[list | None, list | None, list | None, dict | None]


@torch.no_grad()
def candidates_batch(model: KeyphraseModel, batch: Batch) -> list[Candidates]:
    """Per post: (generator hypotheses [(kp, summed log P, normalised log P)] best first, or None;
    classifier labels [(kp, probability)] best first, or None; keyphrase-memory labels [(kp, probability)]
    best first, or None; for the learned ranking, every candidate's features (ranker.candidate_features),
    else None)."""
    c = model.config
    enc = model.encode(batch)
    B = batch.src.shape[0]
    gen_ranked = [None] * B
    if c.generator:
        hyps = beam_search(model, batch, c.beam, c.max_kp_len, enc=enc)
        gen_ranked = hypothesis_strings(model, hyps, batch.oov, limit=c.beam * 2)
    cls_ranked = mem_ranked = features = [None] * B
    labels = model.vocabs.labels
    if c.classifier:
        cls_ranked = label_candidates(enc.cls_logits.softmax(-1), labels, c.n_best, gen_ranked)
    if model.memory is not None:
        p_mem = model.memory.label_distribution(batch.src, batch.attrs, len(labels), batch.text_embedding)
        mem_ranked = label_candidates(p_mem, labels, c.n_best, gen_ranked)
    if c.ranking == "learned":
        p_cent = model.memory.centroid_distribution(batch.text_embedding, len(labels))
        cent_ranked = label_candidates(p_cent, labels, c.n_best, gen_ranked)
        counts = dict(zip(labels.words, model.memory.label_counts(len(labels)).tolist()))
        features = [candidate_features(g, sides, source, counts) for g, *sides, source in
                    zip(gen_ranked, cls_ranked, mem_ranked, cent_ranked, source_words(model, batch))]
    return list(zip(gen_ranked, cls_ranked, mem_ranked, features))


def rank_scores(candidates: tuple, ranking: str, cls_weight: float, mem_weight: float,
                feature_weights=()) -> dict[str, float]:
    """One post's keyphrases with the scores they are ranked by, best first, from its `candidates_batch` tuple
    (the unified ranking reads its first three parts, the learned ranking the features):
    generator: the softmax of the hypotheses' length-normalised log P over the post's hypotheses (q_gen);
    classifier: the labels' probabilities;
    unified: q_gen + cls_weight x P_cls + mem_weight x P_mem over the union of the lists (a keyphrase a side did
    not list gets 0 from it). Normalising the beam's scores over its own list puts the three sides on one scale:
    raw sequence probabilities (~1e-3) next to label probabilities (~1e-1) would let the labels decide alone;
    learned: p(kp | post) of the candidates' features under `feature_weights` (model/ranker.py)."""
    gen_post, cls_post, mem_post = candidates[:3]
    if ranking == "classifier":
        return dict(cls_post)
    if ranking == "learned":
        return learned_scores(candidates[3], feature_weights)
    score: dict[str, float] = {}
    if gen_post:
        norm = torch.tensor([nm for _, _, nm in gen_post]).softmax(0).tolist()
        for (kp, _, _), q in zip(gen_post, norm):
            score[kp] = q
    if ranking == "generator":
        return score
    for side, weight in ((cls_post, cls_weight), (mem_post, mem_weight)):
        for kp, p in side or ():
            score[kp] = score.get(kp, 0.0) + weight * p
    # generator hypotheses first, so that ties (and weights 0) keep the beam's order (sorted() is stable)
    return dict(sorted(score.items(), key=lambda item: item[1], reverse=True))


def rank(candidates: tuple, ranking: str, cls_weight: float, mem_weight: float, n_best: int,
         feature_weights=()) -> list[str]:
    """One post's ranked keyphrases (`rank_scores`), at most n_best."""
    return list(rank_scores(candidates, ranking, cls_weight, mem_weight, feature_weights))[:n_best]


def model_scores(model: KeyphraseModel, candidates: list) -> list[dict[str, float]]:
    """Each post's `rank_scores`, as the model's config ranks (its ranking and its chosen weights)."""
    c = model.config
    return [rank_scores(cands, c.ranking, c.rank_cls_weight, c.rank_mem_weight, c.rank_feature_weights)
            for cands in candidates]


def ensemble_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    """One post's keyphrases with the mean of several models' ranking scores (`rank_scores`; a keyphrase a model
    did not list gets 0 from it), best first; ties keep the first model's order. One model: its own scores."""
    total: dict[str, float] = {}
    for model_scores in scores:
        for kp, value in model_scores.items():
            total[kp] = total.get(kp, 0.0) + value / len(scores)
    return dict(sorted(total.items(), key=lambda item: item[1], reverse=True))


def ensemble_rank(scores: list[dict[str, float]], n_best: int) -> list[str]:
    """One post's keyphrases ranked by `ensemble_scores`, at most n_best."""
    return list(ensemble_scores(scores))[:n_best]


def predict_batch(model: KeyphraseModel, batch: Batch) -> list[list[str]]:
    """Ranked keyphrases per post, as the model's config defines the ranking."""
    c = model.config
    return [rank(cands, c.ranking, c.rank_cls_weight, c.rank_mem_weight, c.n_best, c.rank_feature_weights)
            for cands in candidates_batch(model, batch)]
