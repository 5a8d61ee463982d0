"""SuperGlue (Sarlin, DeTone, Malisiewicz & Rabinovich, CVPR 2020), loading Magic Leap's files.

Written here from the paper; module names follow the official release so that
``superglue_indoor.pth`` / ``superglue_outdoor.pth`` load with every key accounted for. The user
supplies the file (``weights`` option, or ``FEATURELOC_SUPERGLUE_WEIGHTS`` in the environment or
``.env``, workers/settings.py): the licence forbids shipping it.

Pipeline (paper, section 3): keypoint encoder (x, y normalised by image size, detector score)
added to the descriptors; 18 alternating self/cross attention layers (4 heads); a final linear
projection; dot-product scores; log-space Sinkhorn with a learned dustbin score; mutual
argmax with a confidence threshold.

``match_many`` batches the K references of a query: references are zero-padded to the longest
one and a mask keeps padded points out of attention and out of the optimal transport, so each
result equals the single-pair result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from core import config
from core.arrays import as_float32
from core.features.superpoint import where_from
from core.matching.base import Matcher
from core.types import Features, Matches
from core.weights import file_sha256, load_official_checkpoint, resolve_user_weights

NUM_HEADS = 4
LAYER_TYPES = ("self", "cross") * 9
KEYPOINT_ENCODER_WIDTHS = (32, 64, 128, 256)


def pointwise_mlp(channels: Sequence[int]) -> nn.Sequential:
    """1x1 convolutions with BatchNorm + ReLU between them (not after the last)."""
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        layers.append(nn.Conv1d(c_in, c_out, kernel_size=1))
        if i < len(channels) - 2:
            layers += [nn.BatchNorm1d(c_out), nn.ReLU()]
    return nn.Sequential(*layers)


class KeypointEncoder(nn.Module):
    """MLP lifting (x, y, score) to the descriptor dimension."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.encoder = pointwise_mlp([3, *KEYPOINT_ENCODER_WIDTHS, dim])

    def forward(self, keypoints: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # keypoints (B, N, 2) normalised, scores (B, N) -> (B, D, N)
        return self.encoder(torch.cat([keypoints.transpose(1, 2), scores[:, None]], dim=1))


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.proj = nn.ModuleList([nn.Conv1d(dim, dim, kernel_size=1) for _ in range(3)])
        self.merge = nn.Conv1d(dim, dim, kernel_size=1)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # The released weights interleave heads: channel c belongs to head c % heads.
        b, d, n = x.shape
        return x.view(b, d // self.heads, self.heads, n).permute(0, 2, 3, 1)  # (B, H, N, d)

    def forward(
        self, x: torch.Tensor, source: torch.Tensor, source_mask: torch.Tensor | None
    ) -> torch.Tensor:
        q, k, v = (self._split(p(t)) for p, t in zip(self.proj, (x, source, source), strict=True))
        mask = None if source_mask is None else source_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scale 1/sqrt(d)
        b, _, n, _ = out.shape
        return self.merge(out.permute(0, 3, 1, 2).reshape(b, -1, n))


class AttentionalPropagation(nn.Module):
    """Residual message passing: x + MLP([x, attention(x, source)])."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(dim, heads)
        self.mlp = pointwise_mlp([2 * dim, 2 * dim, dim])

    def forward(
        self, x: torch.Tensor, source: torch.Tensor, source_mask: torch.Tensor | None
    ) -> torch.Tensor:
        message = self.attn(x, source, source_mask)
        return self.mlp(torch.cat([x, message], dim=1))


class AttentionalGNN(nn.Module):
    def __init__(self, dim: int, layer_types: Sequence[str]) -> None:
        super().__init__()
        self.layer_types = tuple(layer_types)
        self.layers = nn.ModuleList([AttentionalPropagation(dim, NUM_HEADS) for _ in layer_types])

    def forward(self, d0, d1, mask0=None, mask1=None):
        for layer, kind in zip(self.layers, self.layer_types, strict=True):
            if kind == "cross":
                delta0, delta1 = layer(d0, d1, mask1), layer(d1, d0, mask0)
            else:
                delta0, delta1 = layer(d0, d0, mask0), layer(d1, d1, mask1)
            d0, d1 = d0 + delta0, d1 + delta1
        return d0, d1


class SuperGlueNet(nn.Module):
    def __init__(self, dim: int = 256, layer_types: Sequence[str] = LAYER_TYPES) -> None:
        super().__init__()
        self.dim = dim
        self.kenc = KeypointEncoder(dim)
        self.gnn = AttentionalGNN(dim, layer_types)
        self.final_proj = nn.Conv1d(dim, dim, kernel_size=1)
        self.bin_score = nn.Parameter(torch.tensor(1.0))

    def forward(
        self,
        kpts0: torch.Tensor,
        scores0: torch.Tensor,
        desc0: torch.Tensor,
        kpts1: torch.Tensor,
        scores1: torch.Tensor,
        desc1: torch.Tensor,
        iterations: int,
        mask0: torch.Tensor | None = None,
        mask1: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalised keypoints (B, N, 2), scores (B, N), descriptors (B, D, N); optional
        validity masks (B, N). Returns the log assignment (B, M+1, N+1), dustbins last."""
        d0 = desc0 + self.kenc(kpts0, scores0)
        d1 = desc1 + self.kenc(kpts1, scores1)
        d0, d1 = self.gnn(d0, d1, mask0, mask1)
        m0, m1 = self.final_proj(d0), self.final_proj(d1)
        sim = torch.einsum("bdm,bdn->bmn", m0, m1) / self.dim**0.5
        return log_optimal_transport(sim, self.bin_score, iterations, mask0, mask1)


def normalise_keypoints(keypoints: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Centre on the image and divide by 0.7 x its longer side (the official convention)."""
    w, h = image_size
    centre = keypoints.new_tensor([w / 2, h / 2])
    return (keypoints - centre) / (0.7 * max(w, h))


def log_optimal_transport(
    scores: torch.Tensor,
    bin_score: torch.Tensor,
    iterations: int,
    mask0: torch.Tensor | None = None,
    mask1: torch.Tensor | None = None,
) -> torch.Tensor:
    """Entropic optimal transport with dustbins, in log space (paper, section 3.3).

    ``scores`` (B, M, N) is augmented with a dustbin row and column of ``bin_score``. Row
    marginals are 1 for each of the m real points and n for the dustbin, columns 1 and m, all
    divided by m + n; the result is the log plan multiplied by m + n, so that after convergence
    each real row and column of exp(result) sums to 1. Masked (padded) points get no mass.
    """
    b, m, n = scores.shape
    if mask0 is None:
        mask0 = scores.new_ones((b, m), dtype=torch.bool)
    if mask1 is None:
        mask1 = scores.new_ones((b, n), dtype=torch.bool)
    true = mask0.new_ones((b, 1))
    rows = torch.cat([mask0, true], dim=1)  # (B, M+1), dustbin always valid
    cols = torch.cat([mask1, true], dim=1)
    ms = mask0.sum(1).to(scores)[:, None]  # (B, 1) real counts
    ns = mask1.sum(1).to(scores)[:, None]

    couplings = torch.cat(
        [
            torch.cat([scores, bin_score.expand(b, m, 1)], dim=2),
            bin_score.expand(b, 1, n + 1),
        ],
        dim=1,
    )
    couplings = couplings.masked_fill(~(rows[:, :, None] & cols[:, None, :]), float("-inf"))

    norm = -(ms + ns).log()  # (B, 1)
    log_mu = torch.cat([norm.expand(b, m), ns.log() + norm], dim=1)
    log_nu = torch.cat([norm.expand(b, n), ms.log() + norm], dim=1)

    # Padded rows/columns are all -inf: keep their potentials at 0 instead of -inf - -inf.
    u = torch.zeros_like(log_mu)
    v = torch.zeros_like(log_nu)
    for _ in range(iterations):
        u = torch.where(rows, log_mu - torch.logsumexp(couplings + v[:, None, :], dim=2), 0.0)
        v = torch.where(cols, log_nu - torch.logsumexp(couplings + u[:, :, None], dim=1), 0.0)
    log_plan = couplings + u[:, :, None] + v[:, None, :]
    return log_plan - norm[:, :, None]


def mutual_matches(
    log_assignment: torch.Tensor, threshold: float, n0: int, n1: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) that are each other's best real candidate, with exp(score) > threshold."""
    inner = log_assignment[:n0, :n1]
    best0, j_of_i = inner.max(dim=1)
    i_of_j = inner.argmax(dim=0)
    i = torch.arange(n0, device=inner.device)
    prob = best0.exp()
    keep = (i_of_j[j_of_i] == i) & (prob > threshold)
    idx = torch.stack([i[keep], j_of_i[keep]], dim=1)
    return idx.cpu().numpy().astype(np.int64), prob[keep].clamp(0, 1).cpu().numpy().astype(
        np.float32
    )


class SuperGlueMatcher(Matcher):
    """Learned matching of SuperPoint features.

    ``weights``: path to ``superglue_indoor.pth`` or ``superglue_outdoor.pth`` (default:
    ``FEATURELOC_SUPERGLUE_WEIGHTS``, environment or .env); ``match_threshold``: minimum
    assignment probability; ``sinkhorn_iterations``: optimal transport iterations;
    ``batch_size``: references per forward pass in ``match_many`` (memory grows with
    batch_size x N x N x heads).
    """

    name = "superglue"
    compatible_extractors = frozenset({"superpoint"})

    class Conf(config.Conf):
        weights: str | None = None
        match_threshold: float = 0.2
        sinkhorn_iterations: int = Field(100, ge=1)
        batch_size: int = Field(8, ge=1)

    conf: Conf  # this plug-in's options, merged over the defaults above

    def __init__(self, conf: dict[str, Any] | None = None, device: str = "cpu") -> None:
        super().__init__(conf, device)
        filename = "superglue_indoor.pth or superglue_outdoor.pth"
        path = resolve_user_weights(
            self.conf.weights, "superglue_weights", filename, where_from(filename)
        )
        self.weights_sha256 = file_sha256(path)
        self.net = SuperGlueNet()
        load_official_checkpoint(self.net, path, "SuperGlue")
        self.net.eval().to(device)

    def match(self, query: Features, reference: Features) -> Matches:
        return self.match_many(query, [reference])[0]

    def match_many(self, query: Features, references: Sequence[Features]) -> list[Matches]:
        results: list[Matches] = [Matches.empty() for _ in references]
        if len(query) == 0:
            return results
        todo = [k for k, ref in enumerate(references) if len(ref) > 0]
        step = int(self.conf.batch_size)
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            for k, matches in zip(
                chunk, self._match_batch(query, [references[k] for k in chunk]), strict=True
            ):
                results[k] = matches
        return results

    def _tensors(self, f: Features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Maps store descriptors as float16: the network runs in float32.
        kpts = torch.from_numpy(np.asarray(f.keypoints, dtype=np.float32))
        kpts = normalise_keypoints(kpts, f.image_size)
        scores = torch.from_numpy(np.asarray(f.scores, dtype=np.float32))
        desc = torch.from_numpy(as_float32(f.descriptors)).T
        return kpts, scores, desc

    @torch.inference_mode()
    def _match_batch(self, query: Features, refs: Sequence[Features]) -> list[Matches]:
        dev = self.device
        k = len(refs)
        qk, qs, qd = (t.to(dev) for t in self._tensors(query))
        n_max = max(len(r) for r in refs)
        rk = torch.zeros((k, n_max, 2), device=dev)
        rs = torch.zeros((k, n_max), device=dev)
        rd = torch.zeros((k, qd.shape[0], n_max), device=dev)
        mask1 = torch.zeros((k, n_max), dtype=torch.bool, device=dev)
        for b, ref in enumerate(refs):
            kpts, scores, desc = self._tensors(ref)
            n = len(ref)
            rk[b, :n], rs[b, :n], rd[b, :, :n], mask1[b, :n] = kpts, scores, desc, True
        # A single reference needs no mask: the fast unmasked attention path.
        mask = None if all(len(r) == n_max for r in refs) else mask1
        log_assignment = self.net(
            qk.expand(k, -1, -1),
            qs.expand(k, -1),
            qd.expand(k, -1, -1),
            rk,
            rs,
            rd,
            int(self.conf.sinkhorn_iterations),
            mask1=mask,
        )
        threshold = float(self.conf.match_threshold)
        out = []
        for b, ref in enumerate(refs):
            idx, prob = mutual_matches(log_assignment[b], threshold, len(query), len(ref))
            out.append(Matches(idx, prob))
        return out
