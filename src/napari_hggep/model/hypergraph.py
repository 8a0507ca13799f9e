"""HAM, the hypergraph association module, and its vectorised hyperedge builder."""
from __future__ import annotations

import torch
from torch import nn

RULES = ("nearest", "largest")


def _row_normalised(d: torch.Tensor) -> torch.Tensor:
    m = d.amax(dim=1, keepdim=True)
    return d / torch.where(m > 0, m, torch.ones_like(m))


def hyperedges(
    features: torch.Tensor,
    coords: torch.Tensor,
    k: int = 3,
    rule: str = "nearest",
    chunk: int | None = None,
) -> torch.Tensor:
    """Build one hyperedge per spot, vectorised and in row chunks.

    For node ``i`` and every ``j``: ``s_ij = f_ij / max_j f_ij + p_ij / max_j p_ij``
    with ``f`` the Euclidean distance between node features and ``p`` between spot
    centres (``chunk`` rows at a time; default: as many as keep one ``chunk x N`` score
    matrix near 64 MB). The hyperedge of node ``i`` is ``i`` itself plus the ``K`` nodes
    ``j != i`` with the smallest ``s_ij`` (``rule="nearest"``, the paper's rule) or the
    largest (``rule="largest"``, what the reference code does). ``K`` is capped at
    ``N - 1``.

    Returns a LongTensor ``[2, N * (K + 1)]`` in PyG's ``hyperedge_index`` layout:
    row 0 the node, row 1 the hyperedge id (``i``). Memory is O(N x chunk).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
    n = features.shape[0]
    if coords.shape[0] != n:
        raise ValueError(f"{n} feature rows but {coords.shape[0]} coordinates")
    k = max(min(int(k), n - 1), 0)
    dev = features.device
    ids = torch.arange(n, device=dev)
    if k == 0:
        return torch.stack([ids, ids])
    feats = features.detach()
    xy = coords.detach().to(feats.dtype)
    largest = rule == "largest"
    fill = float("-inf") if largest else float("inf")
    if chunk is None:
        chunk = max(256, (1 << 24) // max(n, 1))
    chunk = max(int(chunk), 1)
    nbrs = []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        s = _row_normalised(torch.cdist(feats[start:stop], feats)) + _row_normalised(torch.cdist(xy[start:stop], xy))
        rows = torch.arange(stop - start, device=dev)
        s[rows, rows + start] = fill  # never pick i itself as a neighbour
        nbrs.append(torch.topk(s, k, dim=1, largest=largest).indices)
    members = torch.cat([ids[:, None], torch.cat(nbrs)], dim=1)  # N x (K+1)
    edge = ids[:, None].expand(-1, k + 1)
    return torch.stack([members.reshape(-1), edge.reshape(-1)])


def hypergraph_conv():
    """torch_geometric's ``HypergraphConv``. Importing torch_geometric runs ``torch.jit.script`` on
    two of its classes, which torch 2.9+ answers with a FutureWarning that means nothing to a user
    (and that torch_geometric will have to act on, not us): only that warning is silenced, and only
    during the import."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        from torch_geometric.nn import HypergraphConv
    return HypergraphConv


class HAM(nn.Module):
    """Two HypergraphConv layers (d -> d/2 -> d), ReLU between, LayerNorm, dropout, residual."""

    def __init__(self, dim: int, k: int = 3, rule: str = "nearest", dropout: float = 0.1):
        super().__init__()
        HypergraphConv = hypergraph_conv()

        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
        self.k, self.rule = k, rule
        self.conv1 = HypergraphConv(dim, dim // 2)
        self.conv2 = HypergraphConv(dim // 2, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, coords_um: torch.Tensor) -> torch.Tensor:
        index = hyperedges(h, coords_um, self.k, self.rule)
        x = torch.relu(self.conv1(h, index))
        x = self.conv2(x, index)
        return h + self.drop(self.norm(x))
