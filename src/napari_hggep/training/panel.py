"""The genes a study's model predicts: a list the user gives (matched by symbol or Ensembl id)
or the most variable genes of the training sections."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from ..data.slide import SlideError

MIN_FOUND = 0.9  # a given gene list must be found at least this well in every section
HVG_MIN_DETECTED = 0.10  # a variable gene must be detected (count > 0) in this fraction of training spots
DEFAULT_HVG = 500
HVG_RULE = ("the N genes with the largest variance of log-normalised expression (counts / spot total x median "
            "total, log1p: the training target; like scanpy's normalize_total + log1p, then the plain variance, "
            "without the dispersion binning of highly_variable_genes' flavours), variance taken within each "
            "training section and averaged over the sections, among genes detected in at least 10 % of the "
            "training spots and present in every section")


def _strip_version(gid: str) -> str:
    return re.sub(r"\.\d+$", "", gid)


def _looks_like_id(name: str) -> bool:
    return bool(re.match(r"^ENS[A-Z]*G\d+", name))


@dataclass
class Panel:
    """The model's genes (names as the user will see them) and how they were chosen."""

    genes: list[str]
    source: str  # "hvg", "file" or "genes.txt"
    rule: str = ""
    n_requested: int = 0
    missing: list[str] = field(default_factory=list)

    def card(self) -> dict:
        return {"source": self.source, "n_genes": len(self.genes), "rule": self.rule,
                "n_requested": self.n_requested, "not_found": self.missing[:50]}


def gene_index(symbols: np.ndarray, ids: np.ndarray | None) -> dict[str, int]:
    """Name -> column: Ensembl ids (without version) and symbols (first occurrence); ids win."""
    index: dict[str, int] = {}
    for j, s in enumerate(symbols):
        index.setdefault(str(s), j)
        index.setdefault(str(s).upper(), j)
    if ids is not None:
        for j, g in enumerate(ids):
            index[_strip_version(str(g))] = j
    return index


def match_columns(genes: list[str], symbols, ids) -> np.ndarray:
    """Column of each gene in a section (-1 where absent); by Ensembl id or symbol."""
    index = gene_index(np.asarray(symbols), None if ids is None else np.asarray(ids))
    out = np.full(len(genes), -1, np.int64)
    for i, g in enumerate(genes):
        key = _strip_version(g) if _looks_like_id(g) else g
        j = index.get(key, index.get(key.upper(), -1))
        out[i] = j
    return out


def panel_from_list(genes: list[str], sections, source: str = "file") -> Panel:
    """A user's gene list, checked against every section: under 90 % found is an error with
    examples; genes missing from some section are dropped (and listed in the card)."""
    genes = list(dict.fromkeys(g.strip() for g in genes if g.strip()))
    if not genes:
        raise SlideError("the gene list is empty")
    found = np.ones(len(genes), bool)
    for sec in sections:
        cols = match_columns(genes, sec.symbols, sec.ids)
        miss = cols < 0
        if miss.mean() > 1 - MIN_FOUND:
            ex = ", ".join(np.asarray(genes)[miss][:5])
            have = ", ".join(list(sec.symbols[:3]) + ([] if sec.ids is None else list(sec.ids[:2])))
            raise SlideError(
                f"section {sec.name}: {int(miss.sum())} of {len(genes)} genes of the list are not in its counts "
                f"(e.g. {ex}); the section has genes like {have}. Use symbols or Ensembl ids as the counts "
                "name them, or choose genes from the data with --hvg N")
        found &= ~miss
    missing = [g for g, f in zip(genes, found) if not f]
    return Panel([g for g, f in zip(genes, found) if f], source, n_requested=len(genes), missing=missing)


def log_normalised(counts: sparse.csr_matrix) -> sparse.csr_matrix:
    """Counts / spot total x median total, log1p, staying sparse (zeros stay zero)."""
    x = sparse.csr_matrix(counts, dtype=np.float64, copy=True)
    total = np.asarray(x.sum(axis=1)).ravel()
    med = max(float(np.median(total)) if len(total) else 1.0, 1.0)
    scale = np.divide(med, total, out=np.zeros_like(total), where=total > 0)
    x = sparse.diags(scale) @ x
    x.data = np.log1p(x.data)
    return x.tocsr()


def select_hvg(sections, n: int) -> Panel:
    """The ``n`` most variable genes of ``sections`` (the training sections only); see
    :data:`HVG_RULE`. Genes are named by symbol (Ensembl id where a symbol repeats)."""
    if n < 1:
        raise SlideError("--hvg must be at least 1")
    # genes present in every section, keyed by symbol (or id where the symbol repeats)
    keys_per = []
    for sec in sections:
        sym = np.asarray(sec.symbols, dtype=str)
        _, first = np.unique(sym, return_index=True)
        keys = {}
        for j in sorted(first):
            keys[sym[j]] = j
        keys_per.append(keys)
    common = set(keys_per[0])
    for k in keys_per[1:]:
        common &= set(k)
    if not common:
        raise SlideError("the sections have no gene names in common; check that their counts name genes the same way")
    names = sorted(common)
    var_sum = np.zeros(len(names))
    detected = np.zeros(len(names))
    spots = 0
    for sec, keys in zip(sections, keys_per):
        cols = np.array([keys[g] for g in names])
        x = log_normalised(sec.counts)[:, cols]
        m = np.asarray(x.mean(axis=0)).ravel()
        m2 = np.asarray(x.multiply(x).mean(axis=0)).ravel()
        var_sum += np.maximum(m2 - m * m, 0)
        detected += np.asarray((x > 0).sum(axis=0)).ravel()
        spots += x.shape[0]
    score = var_sum / len(sections)
    ok = detected >= HVG_MIN_DETECTED * spots
    if not ok.any():
        raise SlideError(f"no gene is detected in {HVG_MIN_DETECTED:.0%} of the training spots; are these raw counts?")
    order = np.argsort(-np.where(ok, score, -np.inf), kind="stable")[: min(n, int(ok.sum()))]
    return Panel([names[i] for i in order], "hvg", HVG_RULE.replace("the N genes", f"the {n} genes"), n_requested=n)


def panel_counts(sec, genes: list[str]) -> np.ndarray:
    """The section's counts for the panel's genes, dense ``spots x len(genes)`` float32."""
    cols = match_columns(genes, sec.symbols, sec.ids)
    if (cols < 0).any():
        raise SlideError(f"section {sec.name}: gene {genes[int(np.argmax(cols < 0))]} of the panel is not in its counts")
    return np.asarray(sec.counts[:, cols].todense(), dtype=np.float32)
