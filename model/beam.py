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
    classifier labels [(kp, probability)] best first, or None). The labels are the classifier's top n_best
    plus every generator hypothesis that is a label, so that the unified ranking has both scores for those."""
    c = model.config
    enc = model.encode(batch)
    B = batch.src.shape[0]
    gen_ranked = [None] * B
    if c.generator:
        hyps = beam_search(model, batch, c.beam, c.max_kp_len, enc=enc)
        gen_ranked = hypothesis_strings(model, hyps, batch.oov, limit=c.beam * 2)
    cls_ranked = [None] * B
    if c.classifier:
        probs = enc.cls_logits.softmax(-1)
        probs[:, 0] = 0.0                                                   # label 0 is not a keyphrase
        top = probs.topk(min(c.n_best, probs.shape[1]), dim=1).indices.tolist()
        labels = model.vocabs.labels
        for b in range(B):
            ids = dict.fromkeys(i for i in top[b] if i != 0)
            if gen_ranked[b]:
                ids.update(dict.fromkeys(labels.index[kp] for kp, _, _ in gen_ranked[b] if labels.index.get(kp, 0)))
            ids = list(ids)
            p = probs[b, ids].tolist()
            cls_ranked[b] = sorted(zip((labels.words[i] for i in ids), p), key=lambda x: -x[1])
    return list(zip(gen_ranked, cls_ranked))


def rank(candidates: tuple[list | None, list | None], ranking: str, lam: float, n_best: int) -> list[str]:
    """One post's ranked keyphrases:
    generator: the beam's order (length-normalised log P);
    classifier: the labels by probability;
    unified: (1 - lam) x generator normalised log P + lam x classifier log P, over the union of both lists.
    A keyphrase one side did not propose gets that side's lowest score for the post (it ranked below all it
    listed). Log scale on both sides: a sequence probability and a label probability differ by orders of
    magnitude (~1e-3 vs ~1e-1), so mixing the probabilities themselves lets one side decide alone."""
    gen_post, cls_post = candidates
    if ranking == "classifier":
        return [kp for kp, _ in cls_post[:n_best]]
    if ranking == "generator" or not cls_post:
        return [kp for kp, _, _ in gen_post[:n_best]]
    if not gen_post:
        return [kp for kp, _ in cls_post[:n_best]]
    gen = {kp: norm for kp, _, norm in gen_post}
    cls = {kp: math.log(max(p, 1e-30)) for kp, p in cls_post}
    gen_floor, cls_floor = min(gen.values()), min(cls.values())
    # generator hypotheses first, so that lam = 0 keeps the beam's order (sorted() is stable)
    order = list(gen) + [kp for kp in cls if kp not in gen]
    score = {kp: (1 - lam) * gen.get(kp, gen_floor) + lam * cls.get(kp, cls_floor) for kp in order}
    return sorted(order, key=score.get, reverse=True)[:n_best]


def predict_batch(model: KeyphraseModel, batch: Batch) -> list[list[str]]:
    """Ranked keyphrases per post, as the model's config defines the ranking."""
    c = model.config
    return [rank(cands, c.ranking, c.rank_cls_weight, c.n_best) for cands in candidates_batch(model, batch)]
