"""Bilinear attention networks (Kim et al., 2018) as a fusion of the text and the image (CLS-BAN of the paper's
Table 2), following the paper and its public code's BAN model:

  bilinear attention maps  A_g = softmax over (region, word) pairs of  p_g^T (ReLU(U^T x_i) o ReLU(V^T y_j)) + b_g,
                           low-rank (rank k x d) pooling, one map per glimpse g;
  per glimpse              f_g = sum-pool_k ( ReLU(U_g^T X) A_g ReLU(V_g^T Y) )        (the joint vector [B, d])
  residual learning        Y <- Linear_g(f_g) + Y                                      (added to every word)
  output                   sum over the words of Y                                     [B, H]

X: the image regions [B, R, H], Y: the post's words [B, L, H]; padding regions and words are masked out of the
attention. The public code's defaults: 8 glimpses, rank factor k = 3, dropout 0.2 on the inputs' projections
and 0.5 on the attention's image side.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class BilinearConnect(nn.Module):
    """ReLU projections of both sides to k x d; with `glimpses`, the low-rank bilinear logits of every pair."""

    def __init__(self, dim: int, hidden: int, k: int, glimpses: int | None, dropout: float, att_dropout: float):
        super().__init__()
        self.k = k
        self.x_net = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden * k), nn.ReLU())
        self.y_net = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden * k), nn.ReLU())
        self.drop = nn.Dropout(att_dropout)
        if glimpses is not None:
            self.p = nn.Parameter(torch.randn(glimpses, hidden * k))
            self.bias = nn.Parameter(torch.randn(glimpses))

    def logits(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [B, R, H], y [B, L, H] -> [B, G, R, L]."""
        return (torch.einsum("gk,brk,blk->bgrl", self.p, self.drop(self.x_net(x)), self.y_net(y))
                + self.bias[None, :, None, None])

    def pool(self, x: torch.Tensor, y: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """The joint vector under one attention map att [B, R, L]: [B, d] (sum-pooled over the rank factor)."""
        joint = torch.einsum("brk,brl,blk->bk", self.x_net(x), att, self.y_net(y))     # [B, k * d]
        return joint.view(joint.shape[0], -1, self.k).sum(-1)


class BilinearAttentionFusion(nn.Module):
    def __init__(self, dim: int, glimpses: int = 8, k: int = 3, dropout: float = 0.2, att_dropout: float = 0.5):
        super().__init__()
        self.glimpses = glimpses
        self.attention = BilinearConnect(dim, dim, k, glimpses, dropout, att_dropout)
        self.joints = nn.ModuleList(BilinearConnect(dim, dim, 1, None, dropout, 0.0) for _ in range(glimpses))
        self.residuals = nn.ModuleList(nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, dim))
                                       for _ in range(glimpses))

    def attention_maps(self, x, x_mask, y, y_mask) -> torch.Tensor:
        """[B, G, R, L]: for each glimpse, a distribution over the valid (region, word) pairs."""
        logits = self.attention.logits(x, y)
        pairs = (x_mask.unsqueeze(2) & y_mask.unsqueeze(1)).unsqueeze(1)               # [B, 1, R, L]
        B, G, R, L = logits.shape
        att = logits.masked_fill(~pairs, float("-inf")).view(B, G, R * L).softmax(-1)
        return att.view(B, G, R, L)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
        """x [B, R, H] regions, y [B, L, H] words (masks [B, R], [B, L]; each post needs one valid of each)
        -> [B, H]."""
        att = self.attention_maps(x, x_mask, y, y_mask)
        for g in range(self.glimpses):
            joint = self.joints[g].pool(x, y, att[:, g])
            y = y + self.residuals[g](joint).unsqueeze(1)
        return (y * y_mask.unsqueeze(-1)).sum(1)
