"""Hyperedge builder: vectorised (chunked cdist + topk) against a per-node Python loop like
the reference code's, on the same data; then forward-pass spots/s for both presets on CPU.

    python benchmarks/bench_hypergraph.py [--sizes 600 2000 5000 20000] [--dim 128]

Each measurement runs in a fresh subprocess so peak extra memory (ru_maxrss above the
resident size after the inputs exist) is the builder's own.
"""
from __future__ import annotations

import argparse
import sys

from _common import child

CHILD = r"""
import json, resource, sys, time, os
import torch
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
from napari_hggep.model.hypergraph import hyperedges, _row_normalised
mode, n, dim, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
g = torch.Generator().manual_seed(0)
f = torch.randn(n, dim, generator=g)
c = torch.rand(n, 2, generator=g) * 10000
import psutil
base = psutil.Process().memory_info().rss

def loop(f, c, k=3, max_nodes=None):
    # the reference's build_adj_hypergraph: one Python iteration per node (two distance rows,
    # normalised, summed, topk), then a Python append per member and one torch.tensor at the end
    edges, weights = [], []
    stop = n if max_nodes is None else min(n, max_nodes)
    for i in range(stop):
        fd = torch.norm(f[i] - f, dim=-1)
        pd = torch.norm(c[i] - c, dim=-1)
        s = fd / fd.max() + pd / pd.max()
        s[i] = float("inf")
        _, nearest = torch.topk(-s, k=k)
        for j in [torch.tensor(i)] + list(nearest):
            edges.append([j, i])
            weights.append(s[j] if j != i else 0.0)
    return torch.tensor(edges, dtype=torch.long).t(), torch.tensor(weights, dtype=torch.float)

def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return min(times)

hyperedges(f[:64], c[:64], 3)  # warm the thread pool, like the loop's first iterations do
if mode == "vec":
    res = {"seconds": best_of(lambda: hyperedges(f, c, 3), 3 if n <= 5000 else 1)}
else:
    probe = min(n, 100)
    t = time.perf_counter(); loop(f, c, max_nodes=probe); dt_probe = time.perf_counter() - t
    est = dt_probe * n / probe
    if est > limit:
        res = {"seconds": None, "estimated_seconds": est}
    else:
        res = {"seconds": best_of(lambda: loop(f, c), 3 if est < 5 else 1)}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
res["peak_extra_mb"] = max(peak - base, 0) / 2**20
print(json.dumps(res))
"""

FWD = r"""
import json, sys, time, os
import torch
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
from napari_hggep.model import HGGEP, preset
name, n = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
m = HGGEP(preset(name)).eval()
x, c = torch.rand(n, 3, 112, 112), torch.rand(n, 2) * 10000
st = torch.randn(n, m.config.stats_features) if m.config.stats_features else None  # computed by the data layer
with torch.inference_mode():
    m(x[:8], c[:8], None if st is None else st[:8])
    t = time.perf_counter()
    tok = torch.cat([m.encode(x[i:i + 256]) for i in range(0, n, 256)])
    m.forward_tokens(tok, c, st)
    dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "spots_per_s": n / dt}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[600, 2000, 5000, 20000])
    ap.add_argument("--dim", type=int, default=128, help="node feature width (compact d=128, paper d=1024)")
    ap.add_argument("--loop-limit", type=float, default=20.0, help="run the loop only if it ends within this (s)")
    ap.add_argument("--forward", type=int, nargs="*", default=[300, 2000])
    a = ap.parse_args(argv)
    print(f"hyperedges, K=3, feature width {a.dim}; best of 3 warm runs (1 for the largest)")
    print(f"{'N':>7} {'vectorised s':>13} {'loop s':>12} {'speedup':>8} {'vec peak MB':>12} {'loop peak MB':>13}")
    for n in a.sizes:
        v = child(CHILD, "vec", n, a.dim, a.loop_limit)
        lp = child(CHILD, "loop", n, a.dim, a.loop_limit)
        ls = lp["seconds"]
        shown = f"{ls:12.3f}" if ls is not None else f"~{lp['estimated_seconds']:10.0f}*"
        speed = (ls or lp["estimated_seconds"]) / v["seconds"]
        print(f"{n:>7} {v['seconds']:>13.3f} {shown} {speed:>7.0f}x {v['peak_extra_mb']:>12.0f} "
              f"{lp['peak_extra_mb'] if ls is not None else float('nan'):>13.0f}")
    print("* loop not run to the end (over the limit): time extrapolated from its first 100 nodes")
    if a.forward:
        print("\nforward pass on CPU (encode in batches of 256 + slide-level attention/HAM/LSTM)")
        for name in ("compact", "paper"):
            for n in a.forward:
                r = child(FWD, name, n)
                print(f"{name:>8} N={n:<6} {r['seconds']:7.2f} s  {r['spots_per_s']:8.0f} spots/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
