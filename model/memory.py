"""Keyphrase memory: the training posts and their keyphrases, retrieved by TF-IDF similarity and, as an option,
by the posts' sentence embeddings.

Posts on one topic recur in the data (the same campaign, event or account posting many times), and a
keyphrase that is absent from a post's words is most often found on its neighbours in the training set. A
softmax classifier over thousands of labels learns such labels from a handful of examples each only slowly; a
nearest-neighbour vote has them from the first epoch. It is complementary to the generator, which finds the
keyphrases present in the post (the figures: docs/results.md, "What each part of the ranking adds").

The memory is non-parametric: built once from the training split (the word ids of post + OCR as the encoder
reads them, and the attribute word ids), stored in the checkpoint, queried with the same ids, and used by the
unified ranking only (model/beam.py `rank`). It scores only the classifier's labels.

    p_mem(label | post) = sum over the K most similar training posts n of sim(post, n)^s [label in n's
                          keyphrases] / sum of the same over all labels
    sim = cosine of TF-IDF vectors, tf = 1 + log(count), idf = log(N / (1 + df)) over the training posts;
    hybrid: sim = (1 - w) x that + w x cosine of the posts' sentence embeddings (the `text_embedding` shard group),
    negative similarities counting as 0.

TF-IDF finds only the neighbours that share words; the embeddings also find those on one topic in other words.

With the embeddings the memory also holds each label's centroid: the normalised mean embedding of the training
posts that carry it, for the learned ranking (model/ranker.py), which hears the post's meaning next to each
keyphrase's as one more side:

    p_cent(label | post) = softmax over the labels of cos(post embedding, label centroid) / CENTROID_TEMPERATURE

A post's vector has two parts: its words (post + OCR) and its image's attribute words, kept apart (the word
"beach" among the attributes is image evidence, not the same feature as "beach" in the text): the attributes
make the vote cross-media. The power s > 1 lets the nearest posts count more. Both were chosen on DEV
(docs/results.md, "How the memory was designed", in "What each part of the ranking adds").
"""
from __future__ import annotations

import torch
import torch.nn as nn

from model.data import SEP, Example, pad_rows

N_SPECIAL_WORDS = SEP + 1      # <pad> <bos> <eos> <unk> <sep>: never evidence of a topic
CENTROID_TEMPERATURE = 0.1     # sharpens the cosines, which differ little between labels; chosen on DEV


class KeyphraseMemory(nn.Module):
    """Buffers only (moved by `.to()`, saved by `state_dict()`); their sizes are the training split's, so a
    checkpoint's tensors replace empty ones of any size on loading."""

    def __init__(self, n_words: int, k: int, power: float, embedding_weight: float = 0.0):
        super().__init__()
        self.k, self.power = k, power
        self.embedding_weight = embedding_weight    # w of the hybrid similarity; 0: TF-IDF alone
        # the model that embedded the training posts ({"weights", "sha256", "meta"}, model.data); None: no embeddings
        self.embedding_provenance: dict | None = None
        self.register_buffer("idf", torch.zeros(2 * n_words))   # [2V] text words, then attribute words
        # keys: [N, 2V] sparse, one L2-normalised TF-IDF row per training post, kept as its coalesced COO parts
        self.register_buffer("key_indices", torch.zeros(2, 0, dtype=torch.long))   # [2, nnz] (post, word)
        self.register_buffer("key_values", torch.zeros(0))                         # [nnz]
        self.register_buffer("labels", torch.zeros(0, 1, dtype=torch.long))       # [N, M] label ids, 0-padded
        self.register_buffer("embeddings", torch.zeros(0, 0))                      # [N, D] unit rows, or empty
        # derived from `embeddings` and `labels` (so not saved): [n labels, D] unit rows, zero for label 0 and for
        # labels no embedded post carries
        self.register_buffer("centroids", torch.zeros(0, 0), persistent=False)
        self.register_load_state_dict_post_hook(KeyphraseMemory._check_keys)
        self.register_load_state_dict_post_hook(lambda memory, _keys: memory._derive_centroids())

    @classmethod
    def build(cls, examples: list[Example], n_words: int, k: int, power: float, chunk: int = 1024,
              embeddings: torch.Tensor | None = None, embedding_provenance: dict | None = None,
              embedding_weight: float = 0.0) -> "KeyphraseMemory":
        """From the training split's examples (their `src` and `attrs` word ids and their `labels`) and, for the
        hybrid similarity, their sentence embeddings [N, D] and the record of the model that made them."""
        memory = cls(n_words, k, power, embedding_weight)
        if embeddings is not None:
            memory.embeddings, memory.embedding_provenance = embeddings.float(), embedding_provenance
        df = torch.zeros(2 * n_words)
        for e in examples:
            df[torch.tensor(sorted(set(e.src) | {n_words + a for a in e.attrs}), dtype=torch.long)] += 1
        idf = torch.log(len(examples) / (1 + df)).clamp(min=0)
        idf[:N_SPECIAL_WORDS] = idf[n_words:n_words + N_SPECIAL_WORDS] = 0.0
        memory.idf = idf
        width = max([len(e.labels) for e in examples] + [1])
        labels = torch.zeros(len(examples), width, dtype=torch.long)
        for i, e in enumerate(examples):
            labels[i, :len(e.labels)] = torch.tensor(e.labels, dtype=torch.long)
        memory.labels = labels
        # dense TF-IDF rows a chunk at a time (all at once would be N x 2V floats: 16 GB on the full data)
        rows = [memory.vectors(pad_rows([e.src for e in part]), pad_rows([e.attrs for e in part])).to_sparse()
                for part in (examples[i:i + chunk] for i in range(0, len(examples), chunk))]
        keys = torch.cat(rows).coalesce()
        memory.key_indices, memory.key_values = keys.indices(), keys.values()
        memory._derive_centroids()
        return memory

    def _derive_centroids(self) -> None:
        if self.embeddings.shape[0] != len(self.labels) or not len(self.labels):
            self.centroids = self.embeddings.new_zeros(0, 0)
            return
        posts = torch.arange(len(self.labels), device=self.labels.device).repeat_interleave(self.labels.shape[1])
        flat = self.labels.flatten()                                             # [N * M] label ids, 0: padding
        sums = self.embeddings.new_zeros(int(flat.max()) + 1, self.embeddings.shape[1])
        sums.index_add_(0, flat, self.embeddings[posts])
        sums[0] = 0.0
        self.centroids = sums / sums.norm(dim=1, keepdim=True).clamp(min=1e-12)

    def label_counts(self, n_labels: int) -> torch.Tensor:
        """[n_labels] how many training posts carry each label (label 0, the padding, counts 0)."""
        counts = torch.bincount(self.labels.flatten(), minlength=n_labels)
        counts[0] = 0
        return counts

    def get_extra_state(self) -> dict:
        return {"embedding_provenance": self.embedding_provenance}

    def set_extra_state(self, state: dict) -> None:
        self.embedding_provenance = state["embedding_provenance"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a memory saved before the hybrid similarity existed has neither embeddings nor their provenance
        state_dict.setdefault(prefix + "embeddings", torch.zeros(0, 0))
        state_dict.setdefault(prefix + "_extra_state", {"embedding_provenance": None})
        # the saved memory is as large as its training split: take its tensors' shapes before copying them
        for name, buf in self._buffers.items():
            saved = state_dict.get(prefix + name)
            if torch.is_tensor(saved) and saved.shape != buf.shape:
                self._buffers[name] = buf.new_empty(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_keys(self, _incompatible_keys) -> None:
        """After loading: indices out of range would read out of bounds in sparse.mm, unsorted ones rank wrong."""
        keys = torch.sparse_coo_tensor(self.key_indices, self.key_values, (len(self.labels), len(self.idf)),
                                       check_invariants=True)
        if not torch.equal(keys.coalesce().indices(), self.key_indices):
            raise ValueError("keyphrase memory: the saved key indices are not sorted and unique (coalesced)")

    def keys(self) -> torch.Tensor:
        """The [N, 2V] sparse key matrix."""
        return torch.sparse_coo_tensor(self.key_indices, self.key_values, (len(self.labels), len(self.idf)),
                                       is_coalesced=True, check_invariants=False)

    def vectors(self, src: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        """Word ids [B, L] and attribute word ids [B, A] (PAD-padded; A may be 0) -> L2-normalised TF-IDF rows
        [B, 2V]; a post without any known word gets a zero row (it retrieves nothing)."""
        counts = torch.zeros(src.shape[0], len(self.idf), device=src.device)
        counts.scatter_add_(1, src, torch.ones_like(src, dtype=counts.dtype))
        counts.scatter_add_(1, attrs + len(self.idf) // 2, torch.ones_like(attrs, dtype=counts.dtype))
        x = torch.where(counts > 0, 1 + counts.clamp(min=1).log(), counts) * self.idf
        return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)

    def similarity(self, src: torch.Tensor, attrs: torch.Tensor, embeddings: torch.Tensor | None = None,
                   embedding_weight: float | None = None) -> torch.Tensor:
        """[B, N] similarity of each post (word ids [B, L], attribute word ids [B, A], sentence embeddings [B, D]
        when the hybrid similarity is on) to each training post; `embedding_weight` defaults to the memory's."""
        w = self.embedding_weight if embedding_weight is None else embedding_weight
        sim = torch.sparse.mm(self.keys(), self.vectors(src, attrs).T).T          # [B, N] TF-IDF cosines
        if not w or not len(self.labels):            # an empty memory retrieves nothing
            return sim
        if embeddings is None or self.embeddings.shape[0] != len(self.labels):
            raise ValueError("the keyphrase memory's hybrid similarity needs the sentence embeddings of the "
                             "training posts and of the queried posts (the text_embedding shard group)")
        return (1 - w) * sim + w * (embeddings @ self.embeddings.T)

    def label_distribution(self, src: torch.Tensor, attrs: torch.Tensor, n_labels: int,
                           embeddings: torch.Tensor | None = None,
                           embedding_weight: float | None = None) -> torch.Tensor:
        """p_mem [B, n_labels] for word ids [B, L], attribute word ids [B, A] and (hybrid) sentence embeddings
        [B, D]; rows sum to 1, or to 0 where no neighbour is similar at all or carries a label."""
        sim = self.similarity(src, attrs, embeddings, embedding_weight)          # [B, N]
        top = sim.topk(min(self.k, sim.shape[1]), dim=1)                         # [B, K]
        labels = self.labels[top.indices]                                        # [B, K, M]
        votes = top.values.clamp(min=0).pow(self.power)                          # opposite meaning: no vote
        weight = votes.unsqueeze(-1).expand_as(labels) * (labels > 0)
        dist = torch.zeros(src.shape[0], n_labels, device=src.device)
        dist.scatter_add_(1, labels.flatten(1), weight.flatten(1))
        dist[:, 0] = 0.0                                                          # label 0: not a keyphrase
        return dist / dist.sum(1, keepdim=True).clamp(min=1e-12)

    def centroid_distribution(self, embeddings: torch.Tensor, n_labels: int) -> torch.Tensor:
        """p_cent [B, n_labels] for the posts' sentence embeddings [B, D]: rows sum to 1 over the labels that
        embedded training posts carry; an empty memory retrieves nothing (rows of 0)."""
        if not len(self.labels):
            return torch.zeros(embeddings.shape[0], n_labels, device=embeddings.device)
        if not len(self.centroids):
            raise ValueError("the keyphrase memory's label centroids need the sentence embeddings of the training "
                             "posts (memory_embedding)")
        logits = torch.full((embeddings.shape[0], n_labels), -torch.inf, device=embeddings.device)
        carried = self.centroids.norm(dim=1) > 0                                  # [n labels]
        cos = (embeddings @ self.centroids.T) / CENTROID_TEMPERATURE             # [B, n labels]
        logits[:, :len(carried)] = cos.masked_fill(~carried, -torch.inf)
        return logits.softmax(1)

    def extra_repr(self) -> str:
        return f"posts={len(self.labels)}, k={self.k}, power={self.power}, embedding_weight={self.embedding_weight}"
