"""The pCTR reward model of the paper (Eq. 3-4): P(click | user, query, response, ad).

Architecture: a frozen sentence encoder embeds the query and the response (each once, cached); a
learned user-ID embedding (64-d) and ad-ID embedding (32-d) join them; the concatenation goes through
an MLP 128 -> 64 -> 32 (ReLU) and a linear layer to one logit; the sigmoid of it is the pCTR.
Trained with BCE and Adam (lr 1e-3, batch 256) on a click log with one row per exposed ad.

ID vocabularies come from the training rows; index 0 of each embedding is the "unknown" row, which
is learned by replacing a small share of training IDs with it (`unknown_id_rate`), so users and ads
never seen in training get a sensible embedding at prediction time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from llmauction_sim.config import PctrConfig
from llmauction_sim.lm.encoder import load_encoder

#: Columns a click log must have; `split` is optional ("train" rows train, the others are held out).
CLICK_LOG_COLUMNS = ("user_id", "ad_id", "query", "response", "clicked")
UNKNOWN = "<unknown>"
_WEIGHTS = "pctr_model.pt"
_META = "pctr_model.json"


class PctrNet(nn.Module):
    """[query vec | response vec | user emb | ad emb] -> MLP -> linear -> logit."""

    def __init__(self, text_dim: int, num_users: int, num_ads: int, config: PctrConfig):
        super().__init__()
        self.user_embedding = nn.Embedding(num_users, config.user_dim)
        self.ad_embedding = nn.Embedding(num_ads, config.ad_dim)
        layers: list[nn.Module] = []
        width = 2 * text_dim + config.user_dim + config.ad_dim
        for size in config.hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, query: torch.Tensor, response: torch.Tensor, user: torch.Tensor,
                ad: torch.Tensor) -> torch.Tensor:
        x = torch.cat([query, response, self.user_embedding(user), self.ad_embedding(ad)], dim=-1)
        return self.mlp(x).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# Metrics


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN with a single class."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy in nats."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else float("nan")


def calibration_table(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> list[dict]:
    """Quantile bins of the predictions: count, mean predicted and observed click rate per bin."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if not len(p):
        return []
    order = np.argsort(p, kind="stable")
    rows = []
    for i, idx in enumerate(np.array_split(order, min(bins, len(p)))):
        if len(idx):
            rows.append({"bin": i, "count": int(len(idx)), "mean_predicted": float(p[idx].mean()),
                         "observed_rate": float(y[idx].mean())})
    return rows


@dataclass
class PctrReport:
    """What `PctrModel.fit` measured; `auc`, `log_loss` and `calibration` are on held-out rows."""
    train_rows: int
    heldout_rows: int
    train_click_rate: float
    heldout_click_rate: float
    auc: float
    log_loss: float
    base_log_loss: float  # log loss of always predicting the training click rate
    calibration: list[dict] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"pCTR model: {self.train_rows} train / {self.heldout_rows} held-out rows; "
                f"held-out AUC {self.auc:.3f}, log loss {self.log_loss:.4f} "
                f"(constant-rate {self.base_log_loss:.4f}), click rate "
                f"{self.heldout_click_rate:.3f}")


# ---------------------------------------------------------------------------------------------
# The model


def _rows_frame(rows: pd.DataFrame | Sequence[Mapping[str, Any]], need_label: bool) -> pd.DataFrame:
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    needed = CLICK_LOG_COLUMNS if need_label else CLICK_LOG_COLUMNS[:-1]
    missing = [c for c in needed if c not in frame.columns]
    if missing and len(frame):
        raise ValueError(f"click rows lack column(s) {missing}; each row needs "
                         f"{', '.join(needed)}")
    return frame


class PctrModel:
    """The pCTR reward model: `fit` on a click log, `predict` P(click) for (user, query, response,
    ad) rows, `save`/`load` a folder. `encoder` is anything with ``encode(texts) -> ndarray`` and
    ``dim`` (default: `llmauction_sim.lm.encoder.load_encoder(config.encoder)`, loaded lazily)."""

    def __init__(self, config: PctrConfig | None = None, encoder: Any = None):
        self.config = config or PctrConfig()
        self._encoder = encoder
        self._features: dict[str, np.ndarray] = {}  # text -> embedding, this model's cache
        self.user_vocab: dict[str, int] = {UNKNOWN: 0}
        self.ad_vocab: dict[str, int] = {UNKNOWN: 0}
        self.net: PctrNet | None = None
        self.report: PctrReport | None = None

    # -- features ------------------------------------------------------------------------------
    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = load_encoder(self.config.encoder)
        return self._encoder

    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of `texts`, each distinct text encoded once per model."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._features))
        if missing:
            vecs = np.asarray(self.encoder.encode(missing), dtype=np.float32)
            self._features.update(zip(missing, vecs))
        if not len(texts):
            return np.zeros((0, int(self.encoder.dim)), dtype=np.float32)
        return np.stack([self._features[t] for t in texts])

    def _ids(self, values: Sequence[str], vocab: Mapping[str, int]) -> np.ndarray:
        return np.fromiter((vocab.get(str(v), 0) for v in values), dtype=np.int64,
                           count=len(values))

    def _tensors(self, frame: pd.DataFrame) -> tuple[torch.Tensor, ...]:
        q = torch.from_numpy(self.text_features(frame["query"].astype(str).tolist()))
        r = torch.from_numpy(self.text_features(frame["response"].astype(str).tolist()))
        u = torch.from_numpy(self._ids(frame["user_id"].tolist(), self.user_vocab))
        a = torch.from_numpy(self._ids(frame["ad_id"].tolist(), self.ad_vocab))
        return q, r, u, a

    # -- training ------------------------------------------------------------------------------
    def _split(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        if "split" in frame.columns:
            is_train = frame["split"].astype(str) == "train"
        else:
            rng = np.random.default_rng(self.config.seed)
            is_train = pd.Series(rng.random(len(frame)) >= self.config.holdout_fraction,
                                 index=frame.index)
        return frame[is_train], frame[~is_train]

    def fit(self, frame: pd.DataFrame) -> PctrReport:
        """Train from scratch on the rows whose `split` is "train" (or a random share when there is
        no `split` column) and report AUC, log loss and calibration on the other rows."""
        frame = _rows_frame(frame, need_label=True)
        train, heldout = self._split(frame)
        y_train = train["clicked"].astype(np.float32).to_numpy()
        clicks = int(y_train.sum())
        if len(train) == 0 or clicks == 0 or clicks == len(train):
            what = ("no training rows" if len(train) == 0 else
                    "no clicks" if clicks == 0 else "no non-clicks")
            raise ValueError(
                f"cannot train the pCTR model: the click log has {what} among its {len(train)} "
                "training rows (split == 'train'), so there is nothing to tell clicked from "
                "unclicked ads. Collect more rounds or more sampled responses per query, check that "
                "responses contain valid ad mentions and that the click judge can click, or mark "
                "some rows split='train'.")
        cfg = self.config
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.user_vocab = {UNKNOWN: 0, **{u: i + 1 for i, u in enumerate(
            sorted(set(train["user_id"].astype(str))))}}
        self.ad_vocab = {UNKNOWN: 0, **{a: i + 1 for i, a in enumerate(
            sorted(set(train["ad_id"].astype(str))))}}
        q, r, u, a = self._tensors(train)
        y = torch.from_numpy(y_train.copy())
        self.net = PctrNet(q.shape[1], len(self.user_vocab), len(self.ad_vocab), cfg)
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.learning_rate,
                               weight_decay=cfg.weight_decay)
        loss_fn = nn.BCEWithLogitsLoss()
        epoch_losses = []
        self.net.train()
        # A small log gets more passes: at least `min_steps` optimizer steps in all.
        batches = -(-len(y) // cfg.batch_size)
        for _ in range(max(cfg.epochs, -(-cfg.min_steps // batches))):
            order = torch.from_numpy(rng.permutation(len(y)))
            total = 0.0
            for start in range(0, len(y), cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                ub, ab = u[idx].clone(), a[idx].clone()
                if cfg.unknown_id_rate > 0:
                    ub[torch.from_numpy(rng.random(len(idx)) < cfg.unknown_id_rate)] = 0
                    ab[torch.from_numpy(rng.random(len(idx)) < cfg.unknown_id_rate)] = 0
                loss = loss_fn(self.net(q[idx], r[idx], ub, ab), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            epoch_losses.append(total / len(y))
        self.net.eval()
        self.report = self.evaluate(heldout, train_click_rate=float(y_train.mean()),
                                    train_rows=len(train), epoch_losses=epoch_losses)
        return self.report

    def evaluate(self, frame: pd.DataFrame, *, train_click_rate: float | None = None,
                 train_rows: int = 0, epoch_losses: list[float] | None = None) -> PctrReport:
        """AUC, log loss and calibration of the model's predictions on labelled `frame`."""
        frame = _rows_frame(frame, need_label=True)
        labels = frame["clicked"].astype(np.float64).to_numpy() if len(frame) else np.zeros(0)
        probs = self.predict(frame) if len(frame) else np.zeros(0)
        base = train_click_rate if train_click_rate is not None else float(labels.mean())
        return PctrReport(
            train_rows=train_rows, heldout_rows=len(frame), train_click_rate=float(base),
            heldout_click_rate=float(labels.mean()) if len(labels) else float("nan"),
            auc=roc_auc(labels, probs), log_loss=log_loss(labels, probs),
            base_log_loss=log_loss(labels, np.full(len(labels), base)),
            calibration=calibration_table(labels, probs, self.config.calibration_bins),
            epoch_losses=list(epoch_losses or []))

    # -- prediction ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> np.ndarray:
        """P(click) per row (user_id, ad_id, query, response), batched; unknown IDs use the
        learned 'unknown' rows."""
        if self.net is None:
            raise RuntimeError("the pCTR model is not trained: call fit() or PctrModel.load()")
        frame = _rows_frame(rows, need_label=False)
        out = np.zeros(len(frame), dtype=np.float64)
        step = self.config.predict_batch_size
        for start in range(0, len(frame), step):
            q, r, u, a = self._tensors(frame.iloc[start:start + step])
            out[start:start + step] = torch.sigmoid(self.net(q, r, u, a)).double().numpy()
        return out

    # -- persistence ---------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write weights and a JSON of config, text dimension and ID vocabularies to `folder`,
        atomically: a reader sees the old folder or the new one, never a mix."""
        if self.net is None:
            raise RuntimeError("nothing to save: the pCTR model is not trained")
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            torch.save(self.net.state_dict(), tmp / _WEIGHTS)
            meta = {"config": self.config.to_dict() if hasattr(self.config, "to_dict")
                    else asdict(self.config),
                    "text_dim": int(self.net.mlp[0].in_features - self.config.user_dim
                                    - self.config.ad_dim) // 2,
                    "user_vocab": list(self.user_vocab), "ad_vocab": list(self.ad_vocab),
                    "report": self.report.to_dict() if self.report else None}
            (tmp / _META).write_text(json.dumps(meta, indent=1))
            old = None
            if folder.exists():
                old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
                os.replace(folder, old)
            os.replace(tmp, folder)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, encoder: Any = None) -> PctrModel:
        """A model saved by `save`; the encoder named in its config is loaded lazily unless given."""
        folder = Path(folder)
        meta = json.loads((folder / _META).read_text())
        config = PctrConfig(**meta["config"])
        model = cls(config, encoder=encoder)
        model.user_vocab = {u: i for i, u in enumerate(meta["user_vocab"])}
        model.ad_vocab = {a: i for i, a in enumerate(meta["ad_vocab"])}
        model.net = PctrNet(meta["text_dim"], len(model.user_vocab), len(model.ad_vocab), config)
        model.net.load_state_dict(torch.load(folder / _WEIGHTS, weights_only=True))
        model.net.eval()
        if meta.get("report"):
            model.report = PctrReport(**meta["report"])
        return model
