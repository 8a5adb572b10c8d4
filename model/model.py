"""The unified cross-media keyphrase model (Wang et al., EMNLP 2020), read top-down:

  text  --Bi-GRU-->  memory M [B, L, H] ----------------------------+
  vision regions --Linear--> V [B, R, H]   attributes --emb,Linear--> A [B, 5, H]
  (optional) the post's sentence embedding --Linear--> S [B, 1, H]
  M3H-Att: pooled queries, pairwise co-attention text<->vision, text<->attributes (text<->sentence) --> c_fuse [B, H]
  classifier: MLP(c_fuse) --> label logits [B, C]
  generator: GRU decoder, Bahdanau attention over M, context + c_fuse, vocabulary MLP,
             copy switch over the source (See et al.) and the classifier's top-K labels as a second copy
             distribution (Eq. 11), mixed as p_gen P_vocab + (1 - p_gen) (a P_copy + b P_cls), a + b = 1.

Every baseline of the paper's Table 2 is this module with parts switched off by its `ModelConfig`.
B: posts, L: source length, R: image regions, N: (post, keyphrase) rows, T: target length, V: generator vocab,
D: sentence embedding size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.ban import BilinearAttentionFusion
from model.config import ModelConfig
from model.data import PAD, VISION_DIMS, Batch, Vocabularies
from model.memory import KeyphraseMemory
from model.topic import NeuralTopicModel, TopicMemory, bow_vocabulary


def masked_pool(x: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """x [B, N, H], mask [B, N] -> [B, H]; rows without any valid position give zeros."""
    m = mask.unsqueeze(-1)
    if x.shape[1] == 0:             # no post of the batch has any position (e.g. no attributes at all)
        return x.new_zeros(x.shape[0], x.shape[2])
    if mode == "max":
        pooled = x.masked_fill(~m, float("-inf")).max(dim=1).values
        return pooled.masked_fill(~mask.any(1, keepdim=True), 0.0)
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


class QueryBlock(nn.Module):
    """One holistic query attends over a memory: multi-head attention then a feed-forward layer, each with a
    residual connection and layer norm (the paper's M3H-Att block)."""

    def __init__(self, d: int, heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q, self.k, self.v = (nn.Linear(d, heads * head_dim) for _ in range(3))
        self.o = nn.Linear(heads * head_dim, d)
        self.ff = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, N, _ = memory.shape
        q = self.q(query).view(B, self.heads, 1, self.head_dim)
        k = self.k(memory).view(B, N, self.heads, self.head_dim).transpose(1, 2)   # [B, h, N, dh]
        v = self.v(memory).view(B, N, self.heads, self.head_dim).transpose(1, 2)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])   # [B, h, 1, dh]
        x = self.ln1(query + self.drop(self.o(att.reshape(B, -1))))
        return self.ln2(x + self.drop(self.ff(x)))


class BiGRU(nn.Module):
    """Bidirectional multi-layer GRU over right-padded sequences. Not packed: on CPU the backward pass of a
    packed GRU allocates a full-size zero gradient per time step; here the backward direction reads each
    sequence reversed within its own length, so padding never enters a real position's state."""

    def __init__(self, input_size: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.fwd = nn.ModuleList(nn.GRU(input_size if i == 0 else 2 * hidden, hidden, batch_first=True)
                                 for i in range(layers))
        self.bwd = nn.ModuleList(nn.GRU(input_size if i == 0 else 2 * hidden, hidden, batch_first=True)
                                 for i in range(layers))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        """x [B, L, E], lengths [B] -> outputs [B, L, 2h] (forward ; backward), final [B, 2h] (last layer)."""
        B, L, _ = x.shape
        pos = torch.arange(L, device=x.device).expand(B, L)
        last = (lengths - 1).to(x.device)
        # position t of the reversed sequence holds position len-1-t (padding positions stay where they are)
        rev = torch.where(pos < lengths.to(x.device).unsqueeze(1), last.unsqueeze(1) - pos, pos)
        rev_idx = rev.unsqueeze(-1)
        for i, (fwd, bwd) in enumerate(zip(self.fwd, self.bwd)):
            if i:
                x = self.drop(x)
            out_f, _ = fwd(x)
            out_b, _ = bwd(x.gather(1, rev_idx.expand(-1, -1, x.shape[-1])))
            x = torch.cat([out_f, out_b.gather(1, rev_idx.expand(-1, -1, out_b.shape[-1]))], -1)
        rows = torch.arange(B, device=x.device)
        half = x.shape[-1] // 2
        final = torch.cat([x[rows, last, :half], x[rows, 0, half:]], -1)   # forward at len-1 ; backward at 0
        return x, final


class SentenceEmbedding(nn.Module):
    """The post's sentence embedding as a modality of one position. A zero row (no embedding for the post) is
    masked out. It remembers which encoder embedded the training posts (the shards' provenance record), so
    that posts embedded by another one are refused rather than read as if comparable."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.provenance: dict | None = None

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """embedding [B, D] -> (x [B, 1, H], mask [B, 1])."""
        return self.proj(embedding).unsqueeze(1), (embedding != 0).any(1, keepdim=True)

    def get_extra_state(self) -> dict:
        return {"provenance": self.provenance}

    def set_extra_state(self, state: dict) -> None:
        self.provenance = state["provenance"]


def absent_modality(B: int, hidden: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A modality no post of the batch has: one position, masked out of fusion -> ([B, 1, H], [B, 1])."""
    return (torch.zeros(B, 1, hidden, device=device), torch.zeros(B, 1, dtype=torch.bool, device=device))


class Fusion(nn.Module):
    """c_fuse = sum over terms of Linear_i(term_i) x present_i, where the terms are each modality's pooled
    vector ("pool"), plus the attention outputs of the pooled text over each other modality ("text-query"),
    plus those of each other modality's pooled vector over the text ("both"). A modality absent for a post
    (no image, no attributes) drops its terms for that post: it is masked out, never fed as zeros."""

    def __init__(self, config: ModelConfig, modalities: list[str]):
        super().__init__()
        c = config
        self.mode, self.pool, self.modalities = c.fusion, c.pool, modalities
        # one block over the sentence embedding's single position: a stack would only re-read the same vector
        layers = {"text": c.text_layers, "vision": c.vision_layers, "attributes": c.attr_layers, "sentence": 1}
        self.terms = [(m, m) for m in modalities]                  # (query modality, memory modality)
        if c.fusion not in ("pool", "ban") and "text" in modalities:
            others = [m for m in modalities if m != "text"]
            self.terms += [("text", m) for m in others]
            if c.fusion == "both":
                self.terms += [(m, "text") for m in others]
        self.stacks = nn.ModuleDict({
            f"{q}->{m}": nn.ModuleList(QueryBlock(c.hidden, c.heads, c.head_dim, c.dropout) for _ in range(layers[m]))
            for q, m in self.terms if q != m})
        self.proj = nn.ModuleDict({f"{q}->{m}": nn.Linear(c.hidden, c.hidden, bias=False) for q, m in self.terms})
        # "ban": one more term, the bilinear attention's joint vector of the words and the image regions
        self.ban = None
        if c.fusion == "ban":
            self.ban = BilinearAttentionFusion(c.hidden, c.ban_glimpses, c.ban_rank)
            self.proj["text<->vision"] = nn.Linear(c.hidden, c.hidden, bias=False)
        self.bias = nn.Parameter(torch.zeros(c.hidden))
        # Each feature standardised ACROSS posts: at initialisation the pooled GRU states of all posts are nearly
        # one vector, which a layer norm (across features) keeps, so the classifier would see the same input for
        # every post and stay at the label prior; batch statistics remove the shared part (docs/results.md,
        # "What changed before that", item 1).
        self.norm = nn.BatchNorm1d(c.hidden)

    def forward(self, feats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """feats: modality -> (x [B, N, H], mask [B, N])."""
        pooled = {m: masked_pool(x, mask, self.pool) for m, (x, mask) in feats.items()}
        present = {m: mask.any(1) for m, (_, mask) in feats.items()}
        out = self.bias
        for q, m in self.terms:
            key = f"{q}->{m}"
            if not (present[q].any() and present[m].any()):
                continue            # no post of the batch has this pair: its term is zero for all
            if q == m:
                term = pooled[m]
            else:
                x, mask = feats[m]
                # A post without this modality attends over a dummy all-valid mask (no NaN); its term is dropped.
                safe_mask = mask | ~present[m].unsqueeze(1)
                term = pooled[q]
                for block in self.stacks[key]:
                    term = block(term, x, safe_mask)
            keep = (present[q] & present[m]).unsqueeze(1).to(term.dtype)
            out = out + self.proj[key](term) * keep
        if self.ban is not None and (present["text"] & present["vision"]).any():
            (x, x_mask), (y, y_mask) = feats["vision"], feats["text"]
            term = self.ban(x, x_mask | ~present["vision"].unsqueeze(1), y, y_mask)
            keep = (present["text"] & present["vision"]).unsqueeze(1).to(term.dtype)
            out = out + self.proj["text<->vision"](term) * keep
        out = out.expand(len(next(iter(feats.values()))[0]), -1)
        n = self.norm
        # a batch of one post has no spread to standardise: it uses the running statistics
        return F.batch_norm(out, n.running_mean, n.running_var, n.weight, n.bias,
                            self.training and out.shape[0] > 1, n.momentum, n.eps)


@dataclass
class Encoded:
    """Encoder outputs for a batch of posts (rows may be repeated for keyphrases or beams by `select`)."""
    memory: torch.Tensor | None      # [B, L, H]
    keys: torch.Tensor | None        # [B, L, H] memory projected for the decoder's attention (computed once)
    src_mask: torch.Tensor | None    # [B, L]
    src_ext: torch.Tensor | None     # [B, L] copy ids
    final: torch.Tensor | None       # [B, H] decoder initial state
    fuse: torch.Tensor | None        # [B, H] c_fuse for the decoder (None when not fed)
    cls_logits: torch.Tensor | None  # [B, C]
    agg_ids: torch.Tensor | None     # [B, K*W] generator ids of the top-K labels' words
    agg_probs: torch.Tensor | None   # [B, K*W] softmax of the labels' logits over those word slots
    topic: torch.Tensor | None = None        # [B, K] the topic model's representation, for the decoder
    topic_loss: torch.Tensor | None = None   # [B] the topic model's loss per post

    def select(self, rows: torch.Tensor) -> "Encoded":
        return Encoded(**{k: (v.index_select(0, rows) if torch.is_tensor(v) else v) for k, v in vars(self).items()})


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig, gen_size: int):
        super().__init__()
        c, H, E = config, config.hidden, config.emb_dim
        self.gru = nn.GRU(E, H, batch_first=True)
        self.att_memory = nn.Linear(H, H, bias=False)                 # Bahdanau: v^T tanh(W_m m_i + W_s s_t + b)
        self.att_query = nn.Linear(H, H)
        self.att_v = nn.Linear(H, 1, bias=False)
        self.ctx = nn.Linear(2 * H, H)                                # [c; s_t] -> c_text
        # TAKG: the post's topics join the output layer's input (Wang et al. 2019a's "topic_attn")
        topics = c.topics if c.topic_decoder else 0
        self.out = nn.Sequential(nn.Linear(E + 2 * H + topics, H), nn.Tanh(), nn.Dropout(c.dropout),
                                 nn.Linear(H, gen_size))
        self.gate = nn.Linear(E + 2 * H, 1) if c.copy else None

    def forward(self, emb_in, state0, enc: Encoded):
        """emb_in [N, T, E], state0 [N, H] -> P_vocab [N, T, V], p_gen [N, T, 1] (or None), attention [N, T, L],
        final state [N, H]."""
        s, last = self.gru(emb_in, state0.unsqueeze(0).contiguous())              # s [N, T, H]
        scores = self.att_v(torch.tanh(enc.keys.unsqueeze(1) + self.att_query(s).unsqueeze(2))).squeeze(-1)
        attn = scores.masked_fill(~enc.src_mask.unsqueeze(1), float("-inf")).softmax(-1)   # [N, T, L]
        ctx = self.ctx(torch.cat([attn @ enc.memory, s], -1))          # [N, T, H]
        if enc.fuse is not None:
            ctx = ctx + enc.fuse.unsqueeze(1)
        feat = torch.cat([emb_in, s, ctx], -1)                         # c_t = [u_t; s_t; c_text + c_fuse]
        out_in = feat if enc.topic is None else torch.cat([feat, enc.topic.unsqueeze(1).expand(-1, s.shape[1], -1)], -1)
        p_vocab = self.out(out_in).softmax(-1)
        p_gen = torch.sigmoid(self.gate(feat)) if self.gate is not None else None
        return p_vocab, p_gen, attn, last.squeeze(0)


class KeyphraseModel(nn.Module):
    def __init__(self, config: ModelConfig, vocabs: Vocabularies, vision_dim: int | None = None,
                 text_embedding_dim: int | None = None):
        super().__init__()
        c = self.config = config
        self.vocabs = vocabs
        self.gen_size = len(vocabs.gen)
        self.vision_dim = vision_dim or (VISION_DIMS[c.vision] if c.vision != "none" else None)
        self.text_embedding_dim = text_embedding_dim if c.text_embedding_modality else None
        if c.text_embedding_modality and not text_embedding_dim:
            raise ValueError(f"config {c.name} reads the posts' sentence embeddings (text_embedding_modality): "
                             f"the model needs their size (text_embedding_dim)")
        # b of Eq. 11: 0 during warm-up, raised by the trainer (`agg_weight.fill_`); float64 holds the config's
        # value exactly, as the Python float it is multiplied as
        self.register_buffer("agg_weight", torch.zeros((), dtype=torch.float64))
        # The training posts' keyphrases for the unified ranking (model/memory.py, read in beam.candidates_batch):
        # empty until the trainer builds it from the train split; None when the config has no memory.
        self.memory = KeyphraseMemory(len(vocabs.words), c.memory_k, c.memory_power,
                                      c.memory_embedding_weight if c.memory_embedding else 0.0) if c.memory else None
        H = c.hidden
        self.embedding = nn.Embedding(len(vocabs.words), c.emb_dim, padding_idx=PAD)
        # U(-0.1, 0.1) as the authors' random embeddings; torch's N(0, 1) saturates the GRU gates early
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        with torch.no_grad():
            self.embedding.weight[PAD].zero_()
        self.emb_drop = nn.Dropout(c.emb_dropout)
        modalities = []
        self.encoder = None
        if c.use_text:
            modalities.append("text")
            if c.generator or not c.topic_memory:      # TMN's classifier reads the words through its topic memory
                self.encoder = BiGRU(c.emb_dim, H // 2, c.enc_layers, c.dropout)
        if c.topics:
            # word id -> bag-of-words column (-1: not in it); rebuilt from the vocabularies, not saved
            self.register_buffer("bow_index", bow_vocabulary(vocabs.words.words, c.topic_bow_size), persistent=False)
            bow_size = int(self.bow_index.max()) + 1
            if bow_size <= 0:
                raise ValueError("the topic model found no training word outside the stop words for its vocabulary")
            self.topic_model = NeuralTopicModel(bow_size, c.topics)
            if c.topic_memory:
                self.topic_memory = TopicMemory(c.emb_dim, bow_size, c.topics, c.topic_memory_dim, H)
        if c.vision != "none":
            modalities.append("vision")
            self.vision_proj = nn.Linear(self.vision_dim, H)
        if c.use_attributes:
            modalities.append("attributes")
            self.attr_proj = nn.Linear(c.emb_dim, H)
        if c.text_embedding_modality:
            modalities.append("sentence")
            self.sentence = SentenceEmbedding(text_embedding_dim, H)
        self.fusion = Fusion(c, modalities)
        self.fuse_drop = nn.Dropout(c.dropout)
        if c.classifier:
            self.classifier = nn.Sequential(nn.Linear(H, H), nn.ReLU(), nn.Dropout(c.dropout),
                                            nn.Linear(H, len(vocabs.labels)))
            words = vocabs.label_gen_words
            width = max(len(w) for w in words)
            # label -> its words as generator ids, padded with PAD (slots masked out of the softmax)
            self.register_buffer("label_words", torch.tensor([w + [PAD] * (width - len(w)) for w in words]),
                                 persistent=False)
        if c.generator:
            self.decoder = Decoder(c, self.gen_size)
            self.register_buffer("gen_to_word", torch.tensor(vocabs.gen_to_word), persistent=False)

    # ---------------------------------------------------------------------------------------------- encoder
    def encode(self, batch: Batch) -> Encoded:
        c = self.config
        feats, memory = {}, None
        src_mask = batch.src != PAD                                        # [B, L]
        final = keys = topic = topic_mean = topic_loss = None
        if c.topics:
            topic, topic_mean, topic_loss = self.topic_model(self.bag_of_words(batch.src))   # [B, K] x 2, [B]
        if c.use_text:
            x = self.emb_drop(self.embedding(batch.src))                   # [B, L, E]
            if self.encoder is not None:
                memory, final = self.encoder(x, batch.src_len)             # [B, L, H], [B, H]
            text = memory
            if c.topic_memory:
                text = self.topic_memory(x, src_mask, topic_mean, self.topic_model.topic_words())   # [B, L, H]
            feats["text"] = (text, src_mask)
        B = batch.src.shape[0]
        if c.vision != "none":
            if batch.vision is not None:
                feats["vision"] = (self.vision_proj(batch.vision), batch.vision_mask)
            else:   # no image in the whole batch
                feats["vision"] = absent_modality(B, c.hidden, batch.src.device)
        if c.use_attributes:
            feats["attributes"] = (self.attr_proj(self.emb_drop(self.embedding(batch.attrs))), batch.attrs != PAD)
        if c.text_embedding_modality:
            if batch.text_embedding is not None:
                feats["sentence"] = self.sentence(batch.text_embedding)      # [B, 1, H], [B, 1]
            else:   # no embedding for the whole batch
                feats["sentence"] = absent_modality(B, c.hidden, batch.src.device)
        fuse = self.fuse_drop(self.fusion(feats))                          # [B, H]
        cls_logits = agg_ids = agg_probs = None
        if c.classifier:
            # Without joint training the classifier learns on its own and does not shape the shared encoder.
            cls_in = fuse if c.joint_training or not c.generator else fuse.detach()
            cls_logits = self.classifier(cls_in)
            if c.aggregate:
                agg_ids, agg_probs = self.label_word_distribution(cls_logits)
        if c.generator:
            keys = self.decoder.att_memory(memory)                        # W_m m_i, once per post
        return Encoded(memory, keys, src_mask, batch.src_ext, final,
                       fuse if (c.generator and c.fuse_into_decoder) else None, cls_logits, agg_ids, agg_probs,
                       topic if c.topic_decoder else None, topic_loss)

    def bag_of_words(self, src: torch.Tensor) -> torch.Tensor:
        """Word ids [B, L] -> counts over the topic model's vocabulary [B, V] (other words dropped)."""
        size = self.topic_model.decoder.out_features
        columns = self.bow_index[src]
        columns = torch.where(columns < 0, size, columns)                 # one spill column, cut off below
        counts = torch.zeros(src.shape[0], size + 1, device=src.device)
        return counts.scatter_add_(1, columns, torch.ones_like(columns, dtype=counts.dtype))[:, :size]

    def label_word_distribution(self, cls_logits: torch.Tensor):
        """Eq. 11's classifier copy distribution: the top-K labels' words, each word slot scored with its label's
        logit, softmax over the slots -> (generator ids [B, K*W], probabilities [B, K*W])."""
        top = cls_logits.topk(min(self.config.agg_top_k, cls_logits.shape[1]), dim=1)
        ids = self.label_words[top.indices]                                # [B, K, W]
        logits = top.values.unsqueeze(-1).expand_as(ids).masked_fill(ids == PAD, float("-inf"))
        # label 0 (<unk>, "some unseen keyphrase") has no words to copy: its slots are masked too
        logits = logits.masked_fill((top.indices == 0).unsqueeze(-1), float("-inf"))
        probs = logits.flatten(1).softmax(-1).nan_to_num(0.0)
        return ids.flatten(1), probs

    # ---------------------------------------------------------------------------------------------- decoder
    def output_distribution(self, p_vocab, p_gen, attn, enc: Encoded, n_oov: int) -> torch.Tensor:
        """P(y) over the generator vocabulary extended by the batch's copy-only words: [N, T, V + n_oov].
        p_gen P_vocab + (1 - p_gen) ((1 - b) P_copy + b P_cls); sums to 1 over the last axis."""
        if p_gen is None:
            return p_vocab
        N, T, _ = p_vocab.shape
        b = float(self.agg_weight) if enc.agg_ids is not None else 0.0
        dist = torch.cat([p_gen * p_vocab, p_vocab.new_zeros(N, T, n_oov)], -1)
        copy = (1 - p_gen) * (1 - b) * attn                                 # [N, T, L]
        dist = dist.scatter_add(2, enc.src_ext.unsqueeze(1).expand(N, T, -1), copy)
        if b > 0:
            cls = (1 - p_gen) * b * enc.agg_probs.unsqueeze(1)              # [N, T, K*W]
            dist = dist.scatter_add(2, enc.agg_ids.unsqueeze(1).expand(N, T, -1), cls)
        return dist

    def input_words(self, ids: torch.Tensor, oov_word_ids: torch.Tensor) -> torch.Tensor:
        """Copy ids [N, T] -> word ids for the decoder's input embedding (a copied word is fed as itself)."""
        in_gen = ids < self.gen_size
        from_gen = self.gen_to_word[ids.clamp(max=self.gen_size - 1)]
        from_src = oov_word_ids.gather(1, (ids - self.gen_size).clamp(min=0)) if oov_word_ids.shape[1] else from_gen
        return torch.where(in_gen, from_gen, from_src)

    def step(self, prev_words, state, enc: Encoded, n_oov: int):
        """One decoding step for N rows: prev_words [N], state [N, H] -> log P [N, V + n_oov], state [N, H]."""
        emb = self.embedding(prev_words).unsqueeze(1)                     # [N, 1, E]
        p_vocab, p_gen, attn, state = self.decoder(emb, state, enc)
        dist = self.output_distribution(p_vocab, p_gen, attn, enc, n_oov)
        return dist.squeeze(1).clamp(min=1e-12).log(), state

    # ------------------------------------------------------------------------------------------------- loss
    def forward(self, batch: Batch, term_scale: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
        """Training losses: classification NLL per keyphrase with a known label (mean), generation NLL per
        keyphrase (sum over its tokens, mean over keyphrases); loss = cls + gamma x gen (Eq. 12), plus
        topic_weight x the topic model's loss when the config has one. `term_scale` weights the terms in the
        total (data-parallel training: model/distributed.py); the counts they average over: `loss_counts`."""
        c = self.config
        scale = term_scale or {}
        enc = self.encode(batch)
        losses = {}
        total = 0.0
        if c.classifier:
            known = batch.labels > 0
            logits = enc.cls_logits[batch.kp_post[known]]
            cls = F.cross_entropy(logits, batch.labels[known]) if known.any() else logits.sum() * 0.0
            losses["cls"] = cls
            total = total + cls * scale.get("cls", 1.0)
        if c.generator:
            rows = enc.select(batch.kp_post)                                # one row per (post, keyphrase)
            emb_in = self.emb_drop(self.embedding(batch.dec_in))           # [N, T, E]
            p_vocab, p_gen, attn, _ = self.decoder(emb_in, rows.final, rows)
            dist = self.output_distribution(p_vocab, p_gen, attn, rows, batch.n_oov)
            nll = -dist.gather(2, batch.dec_out.unsqueeze(-1)).squeeze(-1).clamp(min=1e-12).log()   # [N, T]
            gen = (nll * (batch.dec_out != PAD)).sum(1).mean()
            losses["gen"] = gen
            total = total + c.gamma * gen * scale.get("gen", 1.0)
        if c.topics:                                                        # the topic model's ELBO, per post
            losses["topic"] = enc.topic_loss.mean()
            total = total + c.topic_weight * losses["topic"] * scale.get("topic", 1.0)
        losses["loss"] = total
        return losses

    def loss_counts(self, batch: Batch) -> dict[str, int]:
        """How many items each term of `forward`'s loss averages over in `batch`."""
        c = self.config
        counts = {}
        if c.classifier:
            counts["cls"] = int((batch.labels > 0).sum())
        if c.generator:
            counts["gen"] = len(batch.kp_post)
        if c.topics:
            counts["topic"] = len(batch.index)
        return counts
