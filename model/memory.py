"""Keyphrase memory: the training posts and their keyphrases, retrieved by TF-IDF similarity.

Posts on one topic recur in the data (the same campaign, event or account posting many times), and a
keyphrase that is absent from a post's words is most often found on its neighbours in the training set. A
softmax classifier over thousands of labels learns such labels from a handful of examples each only slowly; a
nearest-neighbour vote has them from the first epoch. On the benchmark protocol's DEV split the vote alone
ranks keyphrases at F1@1 25.7 (the paper's unified model: about 22.5), and it is complementary to the
generator, which finds the keyphrases present in the post: the two combined rank at about 32 (docs/results.md).

The memory is non-parametric: built once from the training split (the word ids of post + OCR as the encoder
reads them, and the attribute word ids), stored in the checkpoint, queried with the same ids, and used by the
unified ranking only (model/beam.py `rank`). It scores only the classifier's labels.

    p_mem(label | post) = sum over the K most similar training posts n of sim(post, n)^s [label in n's
                          keyphrases] / sum of the same over all labels
    sim = cosine of TF-IDF vectors, tf = 1 + log(count), idf = log(N / (1 + df)) over the training posts.

A post's vector has two parts: its words (post + OCR) and its image's attribute words, kept apart (the word
"beach" among the attributes is image evidence, not the same feature as "beach" in the text). The attributes
make the vote cross-media: on DEV the memory alone ranks at F1@1 22.3 from the words, 24.8 with the attributes.
The power s > 1 lets the nearest posts count more (s = 2: 24.8 -> 25.7; s = 4: 23.4).
"""
from __future__ import annotations

import torch

from model.data import SEP, Example, pad_rows

N_SPECIAL_WORDS = SEP + 1      # <pad> <bos> <eos> <unk> <sep>: never evidence of a topic


class KeyphraseMemory:
    def __init__(self, idf: torch.Tensor, keys: torch.Tensor | None, labels: torch.Tensor, k: int, power: float):
        self.idf = idf            # [2V] text words, then attribute words; 0 for specials and unseen words
        self.keys = keys          # [N, 2V] sparse COO, one L2-normalised TF-IDF row per training post
        self.labels = labels      # [N, M] label ids of each training post's keyphrases, 0-padded
        self.k, self.power = k, power

    @classmethod
    def build(cls, examples: list[Example], n_words: int, k: int, power: float,
              chunk: int = 1024) -> "KeyphraseMemory":
        """From the training split's examples (their `src` and `attrs` word ids and their `labels`)."""
        df = torch.zeros(2 * n_words)
        for e in examples:
            df[torch.tensor(sorted(set(e.src) | {n_words + a for a in e.attrs}), dtype=torch.long)] += 1
        idf = torch.log(len(examples) / (1 + df)).clamp(min=0)
        idf[:N_SPECIAL_WORDS] = idf[n_words:n_words + N_SPECIAL_WORDS] = 0.0
        width = max([len(e.labels) for e in examples] + [1])
        labels = torch.zeros(len(examples), width, dtype=torch.long)
        for i, e in enumerate(examples):
            labels[i, :len(e.labels)] = torch.tensor(e.labels, dtype=torch.long)
        memory = cls(idf, None, labels, k, power)
        # dense TF-IDF rows a chunk at a time (all at once would be N x 2V floats: 16 GB on the full data)
        rows = [memory.vectors(pad_rows([e.src for e in part]), pad_rows([e.attrs for e in part])).to_sparse()
                for part in (examples[i:i + chunk] for i in range(0, len(examples), chunk))]
        memory.keys = torch.cat(rows).coalesce()
        return memory

    def vectors(self, src: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        """Word ids [B, L] and attribute word ids [B, A] (PAD-padded; A may be 0) -> L2-normalised TF-IDF rows
        [B, 2V]; a post without any known word gets a zero row (it retrieves nothing)."""
        counts = torch.zeros(src.shape[0], len(self.idf), device=src.device)
        counts.scatter_add_(1, src, torch.ones_like(src, dtype=counts.dtype))
        counts.scatter_add_(1, attrs + len(self.idf) // 2, torch.ones_like(attrs, dtype=counts.dtype))
        x = torch.where(counts > 0, 1 + counts.clamp(min=1).log(), counts) * self.idf
        return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)

    def label_distribution(self, src: torch.Tensor, attrs: torch.Tensor, n_labels: int) -> torch.Tensor:
        """p_mem [B, n_labels] for word ids [B, L] and attribute word ids [B, A]; rows sum to 1, or to 0 where
        no neighbour shares a word or carries a label."""
        sim = torch.sparse.mm(self.keys, self.vectors(src, attrs).T).T          # [B, N] cosine similarities
        top = sim.topk(min(self.k, sim.shape[1]), dim=1)                         # [B, K]
        labels = self.labels[top.indices]                                        # [B, K, M]
        weight = top.values.pow(self.power).unsqueeze(-1).expand_as(labels) * (labels > 0)
        dist = torch.zeros(src.shape[0], n_labels, device=src.device)
        dist.scatter_add_(1, labels.flatten(1), weight.flatten(1))
        dist[:, 0] = 0.0                                                          # label 0: not a keyphrase
        return dist / dist.sum(1, keepdim=True).clamp(min=1e-12)

    def to(self, device) -> "KeyphraseMemory":
        return KeyphraseMemory(self.idf.to(device), self.keys.to(device), self.labels.to(device), self.k,
                               self.power)

    def state(self) -> dict:
        """Plain tensors for a checkpoint."""
        keys = self.keys.cpu()
        return {"idf": self.idf.cpu(), "indices": keys.indices(), "values": keys.values(),
                "n_posts": keys.shape[0], "labels": self.labels.cpu(), "k": self.k,
                "power": self.power}

    @classmethod
    def from_state(cls, s: dict) -> "KeyphraseMemory":
        keys = torch.sparse_coo_tensor(s["indices"], s["values"], (s["n_posts"], len(s["idf"])),
                                       check_invariants=True).coalesce()
        return cls(s["idf"], keys, s["labels"], s["k"], s["power"])
