"""Latent topics of a post for the topic-aware baselines of the paper's Table 2:

* NeuralTopicModel: the variational neural topic model shared by Zeng et al. (2018, TMN) and Wang et al. (2019a,
  TAKG): a bag of words -> two ReLU layers (+ a linear shortcut) -> Gaussian latent z (K topics) -> four tanh
  layers with a residual -> topic representation g -> softmax over the bag-of-words vocabulary. Its loss is the
  ELBO: the words' negative log-likelihood plus KL(q(z|x) || N(0, I)), and an L1 penalty on the topic-word
  weights (their public code's sparsity regulariser, at its initial strength).
* TopicMemory: TMN's topic memory for classification: each topic's word distribution is embedded, matched with
  every word of the post, the match added to the post's topic mixture, and the result added to the words;
  a CNN over the words (widths 1, 2, 3) gives the post's sequence features.

The bag of words is read from the encoder's input ids: the `topic_bow_size` most frequent training words that
are not stop words (the vocabulary is sorted by frequency).

Where this departs from the public code: the topic model is trained jointly with the keyphrase model from the
first epoch (TAKG's `p_0_joint` schedule; their README pre-trains it alone for 100 epochs, TMN for 50); its L1
strength stays at the initial 1e-3 instead of being adapted towards a target sparsity; both models see word
counts (TAKG's input; TMN normalises its input and reconstructs word indicators); TMN's CNN features are
max-pooled by the fusion and classified by this project's MLP classifier.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.data import WORD_SPECIALS

# Function words and Twitter tokens that carry no topic (kept out of the bag of words).
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves im dont u ur rt via amp get got
<number> <url> <user> <hashtag> <emphasis> <allcaps> <elongated> <repeated> <censored> <date> <time> <money>
<percent> <phone> <email>
""".split())


def bow_vocabulary(words: list[str], size: int) -> torch.Tensor:
    """word id -> its bag-of-words column, or -1: [len(words)] (specials, stop words, punctuation and the words
    past the `size` most frequent are left out)."""
    index = torch.full((len(words),), -1, dtype=torch.long)
    column = 0
    for i, w in enumerate(words):
        if column == size:
            break
        if w in WORD_SPECIALS or w in STOPWORDS or not any(ch.isalnum() for ch in w):
            continue
        index[i] = column
        column += 1
    return index


class NeuralTopicModel(nn.Module):
    def __init__(self, bow_size: int, topics: int, hidden: int = 500, l1_strength: float = 1e-3):
        super().__init__()
        self.l1_strength = l1_strength
        self.enc1, self.enc2 = nn.Linear(bow_size, hidden), nn.Linear(hidden, hidden)
        self.shortcut = nn.Linear(bow_size, hidden, bias=False)
        self.mu, self.logvar = nn.Linear(hidden, topics), nn.Linear(hidden, topics)
        self.generator = nn.ModuleList(nn.Linear(topics, topics) for _ in range(4))
        self.decoder = nn.Linear(topics, bow_size)            # its weight [bow, K]: the topic-word matrix

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        g = z
        for layer in self.generator:
            g = torch.tanh(layer(g))
        return g + z

    def forward(self, bow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """bow [B, V] word counts -> (g [B, K] from a sample of z while training and from its mean otherwise,
        g_mean [B, K] always from the mean, the per-post loss [B]). The sample feeds the reconstruction (and
        TAKG's decoder, as their code does); TMN's memory reads g_mean: at initialisation the sample's noise
        (sd ~1) is some 20 times the words' features, and it changes every step, so a classifier reading it
        learns nothing (docs/results.md, "cls-tmn")."""
        h = F.relu(self.enc2(F.relu(self.enc1(bow)))) + self.shortcut(bow)
        mu, logvar = self.mu(h), self.logvar(h)
        g_mean = self.generate(mu)
        g = self.generate(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)) if self.training else g_mean
        nll = -(bow * self.decoder(g).log_softmax(-1)).sum(-1)
        kld = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)
        return g, g_mean, nll + kld + self.l1_strength * self.decoder.weight.abs().sum()

    def topic_words(self) -> torch.Tensor:
        """Each topic's distribution over the bag-of-words vocabulary: [K, V]."""
        return self.decoder.weight.t().softmax(-1)


class TopicMemory(nn.Module):
    """TMN (one hop, as their public code runs it): words x [B, L, E] and the post's topics g [B, K] ->
    sequence features [B, L, H]."""

    def __init__(self, emb_dim: int, bow_size: int, topics: int, memory_dim: int, hidden: int,
                 filters: int = 512, widths: tuple[int, ...] = (1, 2, 3), dropout: float = 0.05):
        super().__init__()
        self.words = nn.Linear(emb_dim, memory_dim)           # word features (ReLU), dimension of the memory
        self.topics = nn.Linear(bow_size, memory_dim)         # a topic's word distribution -> its memory slot
        self.match = nn.Linear(topics, memory_dim)            # (topic mixture + match) -> memory dimension
        self.out = nn.Linear(memory_dim, memory_dim)
        self.convs = nn.ModuleList(nn.Conv1d(memory_dim, filters, w) for w in widths)
        self.proj = nn.Linear(filters * len(widths), hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor, topic_words: torch.Tensor) -> torch.Tensor:
        u = self.drop(F.relu(self.words(x)))                                  # [B, L, D]
        slots = F.relu(self.topics(topic_words))                              # [K, D]
        match = u @ slots.t()                                                 # [B, L, K]
        joint = F.relu(self.match(match + g.unsqueeze(1)))                    # [B, L, D]
        s = F.relu(self.out(joint + u)) * mask.unsqueeze(-1)                  # [B, L, D], padding zeroed
        L = s.shape[1]
        feats = []
        for conv in self.convs:
            w = conv.kernel_size[0]
            # right-pad so every width gives one feature per position; positions past a post's end are masked
            # out of the pooling downstream
            y = F.relu(conv(F.pad(s.transpose(1, 2), (0, w - 1))))             # [B, filters, L]
            feats.append(y[:, :, :L])
        return self.proj(self.drop(torch.cat(feats, 1).transpose(1, 2)))      # [B, L, H]
