"""Batched beam search and the final ranking of keyphrases.

All posts of a batch and all their beams advance together as one [B * K] row block on the device; the only
per-post Python work is turning the finished id sequences into strings at the end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from model.data import BOS, EOS, PAD, UNK, Batch
from model.model import KeyphraseModel


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


@torch.no_grad()
def candidates_batch(model: KeyphraseModel, batch: Batch) -> list[tuple[list | None, list | None]]:
    """Per post: (generator hypotheses [(kp, summed log P, normalised log P)] best first, or None;
    classifier labels [(kp, probability)] best first, or None)."""
    c = model.config
    enc = model.encode(batch)
    cls_ranked = [None] * batch.src.shape[0]
    if c.classifier:
        probs = enc.cls_logits.softmax(-1)
        probs[:, 0] = 0.0                                                   # label 0 is not a keyphrase
        top = probs.topk(min(c.n_best, probs.shape[1]), dim=1)
        labels = model.vocabs.labels.words
        cls_ranked = [[(labels[i], p) for i, p in zip(ids, ps) if i != 0]
                      for ids, ps in zip(top.indices.tolist(), top.values.tolist())]
    gen_ranked = [None] * batch.src.shape[0]
    if c.generator:
        hyps = beam_search(model, batch, c.beam, c.max_kp_len, enc=enc)
        gen_ranked = hypothesis_strings(model, hyps, batch.oov, limit=c.beam * 2)
    return list(zip(gen_ranked, cls_ranked))


def rank(candidates: tuple[list | None, list | None], ranking: str, lam: float, n_best: int) -> list[str]:
    """One post's ranked keyphrases:
    generator: the beam's order (length-normalised score);
    classifier: the labels by probability;
    unified: P(kp) = lam P_cls(kp) + (1 - lam) P_gen(kp), P_gen the hypotheses' sequence probabilities."""
    gen_post, cls_post = candidates
    if ranking == "classifier":
        return [kp for kp, _ in cls_post[:n_best]]
    if ranking == "generator":
        return [kp for kp, _, _ in gen_post[:n_best]]
    score: dict[str, float] = {}
    for kp, lp, _ in gen_post:
        score[kp] = score.get(kp, 0.0) + (1 - lam) * math.exp(lp)
    for kp, p in cls_post:
        score[kp] = score.get(kp, 0.0) + lam * p
    return sorted(score, key=score.get, reverse=True)[:n_best]


def predict_batch(model: KeyphraseModel, batch: Batch) -> list[list[str]]:
    """Ranked keyphrases per post, as the model's config defines the ranking."""
    c = model.config
    return [rank(cands, c.ranking, c.rank_cls_weight, c.n_best) for cands in candidates_batch(model, batch)]
