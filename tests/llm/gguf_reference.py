"""An independent float32 numpy reference of a Llama GGUF model (no npud code).

Reads the file with the ``gguf`` package's own reader, dequantises with its routines, and runs
the forward pass over a whole sequence at once (explicit causal mask, no KV cache). It keeps
the Q/K rows in the file's order and applies RoPE the way llama.cpp does for them, to adjacent
pairs ``(x[2i], x[2i+1])``, where npud un-permutes the rows and rotates halves: agreement of
the two is what shows the loader's un-permutation right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


class GgufReference:
    """A Llama decoder in float32 numpy, straight from a GGUF file."""

    def __init__(self, path: Path) -> None:
        reader = GGUFReader(str(path))

        def field(key: str) -> object:
            return reader.fields[key].contents()

        self.layers = int(field("llama.block_count"))  # type: ignore[call-overload]
        self.heads = int(field("llama.attention.head_count"))  # type: ignore[call-overload]
        self.kv_heads = int(field("llama.attention.head_count_kv"))  # type: ignore[call-overload]
        self.eps = float(field("llama.attention.layer_norm_rms_epsilon"))  # type: ignore[arg-type]
        self.theta = float(field("llama.rope.freq_base"))  # type: ignore[arg-type]
        self.w: dict[str, np.ndarray] = {}
        for t in reader.tensors:
            values = dequantize(t.data, t.tensor_type)
            self.w[t.name] = np.asarray(values, dtype=np.float32).reshape(
                tuple(reversed([int(d) for d in t.shape]))
            )
        self.dim = self.w["token_embd.weight"].shape[1]
        self.dh = self.dim // self.heads

    def _rms(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(self.eps)) * w

    def _rope_pairs(self, x: np.ndarray, t: int) -> np.ndarray:
        # x: [T, heads, dh]; rotate (x[2i], x[2i+1]) by pos * theta^(-2i/dh)
        inv = self.theta ** (-np.arange(0, self.dh, 2, dtype=np.float64) / self.dh)
        ang = np.arange(t, dtype=np.float64)[:, None] * inv[None, :]
        cos = np.cos(ang).astype(np.float32)[:, None, :]
        sin = np.sin(ang).astype(np.float32)[:, None, :]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits ``[T, vocab]`` (float32) for every position of ``ids``."""
        w, t, dh = self.w, len(ids), self.dh
        x = w["token_embd.weight"][np.asarray(ids)]
        mask = np.triu(np.full((t, t), -np.inf, dtype=np.float32), k=1)
        group = self.heads // self.kv_heads
        for layer in range(self.layers):
            p = f"blk.{layer}."
            h = self._rms(x, w[p + "attn_norm.weight"])
            q = (h @ w[p + "attn_q.weight"].T).reshape(t, self.heads, dh)
            k = (h @ w[p + "attn_k.weight"].T).reshape(t, self.kv_heads, dh)
            v = (h @ w[p + "attn_v.weight"].T).reshape(t, self.kv_heads, dh)
            q, k = self._rope_pairs(q, t), self._rope_pairs(k, t)
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
            scores = np.einsum("thd,shd->hts", q, k) / np.float32(np.sqrt(dh)) + mask
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probs = scores / scores.sum(axis=-1, keepdims=True)
            attn = np.einsum("hts,shd->thd", probs, v).reshape(t, self.heads * dh)
            x = x + attn @ w[p + "attn_output.weight"].T
            h = self._rms(x, w[p + "ffn_norm.weight"])
            gate = h @ w[p + "ffn_gate.weight"].T
            up = h @ w[p + "ffn_up.weight"].T
            x = x + (gate / (np.float32(1.0) + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
        x = self._rms(x, w["output_norm.weight"])
        head = w.get("output.weight", w["token_embd.weight"])
        return np.asarray(x @ head.T, dtype=np.float32)
