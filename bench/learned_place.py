"""A place descriptor learned on the map (issue 12, part 3): does it retrieve better than VLAD?

A NetVLAD head (Arandjelović et al., CVPR 2016: soft-assignment to learned clusters, residuals
aggregated, intra- and L2-normalised) over the map's own frozen XFeat local descriptors (the
``--keypoints`` strongest of each reference, as stored in the map: nothing is re-extracted),
trained with a triplet margin loss and hardest-negative mining as in the visual place
recognition projects (NetVLAD, MixVPR, CosPlace):

- positive of a view: the most similar view (current head) among the references at *other*
  positions within ``--positive-radius`` (a query's own position is never in the map), so the
  pair faces the same way and overlaps;
- negatives: the hardest views at positions farther than ``--negative-radius``, re-mined every
  epoch with the current head.

Measured: recall@1/5/20/50 (a shortlisted reference within 5 of the truth) of ``vlad`` (the
map's retriever, as the engine uses it), ``learned`` and ``fused`` (z-scored similarities of the
two, summed) on

- ``--heldout`` pseudo-queries: one view of each of that many map positions, never trained on
  (their positions are left out of training), localised with their position hidden;
- ``queries.csv`` (measured, never fitted: the head's settings below were set beforehand).

    python -m bench.learned_place --out /work/cache/v2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.accuracy import MAP_NAME, load_queries
from bench.getty_maps import GETTY
from core.evaluation import HIT_RADIUS, first_rank_within
from core.heldout import sample_heldout
from core.images import read_image
from core.localiser import Localiser
from core.mapstore import MapStore
from core.positions import at_position, position_groups, position_key

KS = (1, 5, 20, 50)


class NetVLADHead(nn.Module):
    """Soft-assignment VLAD over local descriptors (B, N, D) with a padding mask (B, N)."""

    def __init__(self, centroids: np.ndarray, alpha: float = 30.0) -> None:
        super().__init__()
        c = torch.as_tensor(centroids, dtype=torch.float32)
        self.centroids = nn.Parameter(c.clone())
        # NetVLAD's initialisation: assignment logits 2*alpha*c.x - alpha*|c|^2.
        self.assign = nn.Linear(c.shape[1], c.shape[0])
        with torch.no_grad():
            self.assign.weight.copy_(2 * alpha * c)
            self.assign.bias.copy_(-alpha * (c * c).sum(1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        a = F.softmax(self.assign(x), dim=-1) * mask[..., None]  # (B, N, K)
        v = torch.einsum("bnk,bnd->bkd", a, x) - a.sum(1)[..., None] * self.centroids[None]
        v = F.normalize(v, dim=-1).flatten(1)
        return F.normalize(v, dim=-1)


def local_descriptors(feats, keypoints: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``keypoints`` strongest descriptors (padded) and their mask."""
    order = np.argsort(-feats.scores)[:keypoints]
    d = np.zeros((keypoints, feats.descriptors.shape[1]), np.float16)
    d[: len(order)] = feats.descriptors[order]
    m = np.zeros(keypoints, np.float32)
    m[: len(order)] = 1
    return d, m


def describe(head: NetVLADHead, desc: np.ndarray, mask: np.ndarray, batch: int = 256) -> np.ndarray:
    out = []
    with torch.no_grad():
        for s in range(0, len(desc), batch):
            x = torch.as_tensor(desc[s : s + batch], dtype=torch.float32)
            out.append(head(x, torch.as_tensor(mask[s : s + batch])).numpy())
    return np.concatenate(out)


def train(
    head: NetVLADHead,
    desc: np.ndarray,
    mask: np.ndarray,
    pos: np.ndarray,
    train_rows: np.ndarray,
    args,
    log=print,
) -> None:
    opt = torch.optim.Adam(head.parameters(), lr=args.lr)
    dist = np.abs(pos[:, None] - pos[None]).sum(-1)  # L1 between references
    groups = position_groups(pos)
    rng = np.random.default_rng(0)
    tr = np.asarray(train_rows)
    for epoch in range(args.epochs):
        g = describe(head, desc[tr], mask[tr])
        sims = g @ g.T
        d = dist[np.ix_(tr, tr)]
        # Views of the same position are not positives.
        near = (groups[tr][:, None] != groups[tr][None]) & (d <= args.positive_radius)
        far = d > args.negative_radius
        anchors = np.flatnonzero(near.any(1))
        positives = np.where(near[anchors], sims[anchors], -np.inf).argmax(1)
        hard = np.argsort(-np.where(far[anchors], sims[anchors], -np.inf), axis=1)[
            :, : args.negatives
        ]
        order = rng.permutation(len(anchors))
        losses = []
        for s in range(0, len(order), args.batch):
            b = order[s : s + args.batch]
            rows = np.concatenate([anchors[b], positives[b], hard[b].ravel()])
            x = torch.as_tensor(desc[tr[rows]], dtype=torch.float32)
            v = head(x, torch.as_tensor(mask[tr[rows]]))
            n = len(b)
            a, p, neg = v[:n], v[n : 2 * n], v[2 * n :].reshape(n, args.negatives, -1)
            dp = 2 - 2 * (a * p).sum(-1)
            dn = 2 - 2 * torch.einsum("bd,bkd->bk", a, neg)
            loss = F.relu(dp[:, None] - dn + args.margin).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        log(f"  epoch {epoch + 1}: {len(anchors)} anchors, triplet loss {np.mean(losses):.4f}")


def recall(ranked_positions: list[np.ndarray], truths: list[tuple[float, float]]) -> dict:
    ranks = [
        first_rank_within(p, t, HIT_RADIUS) for p, t in zip(ranked_positions, truths, strict=True)
    ]
    return {k: float(np.mean([r is not None and r < k for r in ranks])) for k in KS}


def zscore(s: np.ndarray) -> np.ndarray:
    return (s - s.mean()) / (s.std() + 1e-9)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/out"))
    ap.add_argument("--getty", type=Path, default=GETTY)
    ap.add_argument("--heldout", type=int, default=400)
    ap.add_argument("--keypoints", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=64, help="0: the map's VLAD codebook")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--alpha", type=float, default=30.0, help="initial assignment sharpness")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--negatives", type=int, default=5)
    ap.add_argument("--margin", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--positive-radius", type=float, default=8.0)
    ap.add_argument("--negative-radius", type=float, default=25.0)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    ref_map = MapStore(args.out / "maps").open(MAP_NAME)
    loc = Localiser(ref_map)
    pos = ref_map.positions
    t0 = time.perf_counter()
    pairs = [local_descriptors(ref_map.features[i], args.keypoints) for i in range(len(ref_map))]
    desc = np.stack([p[0] for p in pairs])
    mask = np.stack([p[1] for p in pairs])
    print(f"read {desc.shape} local descriptors in {time.perf_counter() - t0:.0f} s")

    held = sample_heldout(ref_map, args.heldout, seed=1)
    held_keys = {position_key(*pos[r]) for r in held}
    train_rows = np.array([i for i in range(len(pos)) if position_key(*pos[i]) not in held_keys])
    if args.clusters == 0:
        # Start from the map's own VLAD codebook: the head begins close to the retriever it
        # would replace, and training can only move it from there.
        centroids = np.asarray(loc.retriever.centroids, np.float32)
    else:  # k-means (faiss) on a sample of the training views' descriptors
        import faiss

        sample = desc[train_rows][mask[train_rows] > 0][:: max(1, len(train_rows) // 20)]
        sample = sample.astype(np.float32)
        sample /= np.linalg.norm(sample, axis=1, keepdims=True) + 1e-9
        km = faiss.Kmeans(sample.shape[1], args.clusters, niter=20, seed=0)
        km.train(sample)
        centroids = km.centroids
    head = NetVLADHead(centroids, args.alpha)
    t0 = time.perf_counter()
    train(head, desc, mask, pos, train_rows, args)
    print(f"trained in {time.perf_counter() - t0:.0f} s")
    g = describe(head, desc, mask)

    def shortlists(query_desc: np.ndarray, query_feats, hidden_rows) -> dict[str, np.ndarray]:
        out = {}
        v_scores = loc.retriever.scores(query_feats, ref_map)
        l_scores = g @ query_desc
        for name, s in (
            ("vlad", v_scores),
            ("learned", l_scores),
            ("fused", zscore(v_scores) + zscore(l_scores)),
        ):
            s = np.array(s, np.float64)
            if hidden_rows is not None:
                s[hidden_rows] = -np.inf
            out[name] = pos[np.argsort(-s, kind="stable")[: max(KS)]]
        return out

    for label, items in (
        (
            "held-out",
            [(ref_map.features[r], (float(pos[r, 0]), float(pos[r, 1])), r) for r in held],
        ),
        (
            "queries.csv",
            [
                (loc.extractor.extract(read_image(p)), (x, y), None)
                for _, p, x, y in load_queries(args.getty)
            ],
        ),
    ):
        lists: dict[str, list[np.ndarray]] = {"vlad": [], "learned": [], "fused": []}
        truths = []
        for feats, truth, row in items:
            d, m = local_descriptors(feats, args.keypoints)
            q = describe(head, d[None], m[None])[0]
            hidden = None if row is None else np.flatnonzero(at_position(pos, pos[row]))
            for name, ranked in shortlists(q, feats, hidden).items():
                lists[name].append(ranked)
            truths.append(truth)
        for name, ranked in lists.items():
            r = recall(ranked, truths)
            print(f"{label:12s} {name:8s} " + " ".join(f"R@{k} {r[k]:.3f}" for k in KS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
