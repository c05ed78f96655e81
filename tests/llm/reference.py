"""An independent numpy reference of a Llama-style decoder (no npud code).

Reads config.json and the safetensors file with the ``safetensors`` package directly and runs
the textbook forward pass in float64 over the whole sequence (no KV cache: every step
recomputes attention over all tokens with an explicit causal mask), so that it shares neither
code nor algorithm shape with npud's compiled programs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


class ReferenceLlama:
    """A Llama decoder in float64 numpy: RMSNorm, RoPE (rotate-half), GQA, SwiGLU."""

    def __init__(self, model_dir: Path) -> None:
        self.cfg = json.loads((model_dir / "config.json").read_text())
        raw = {}
        for file in sorted(model_dir.glob("*.safetensors")):
            raw.update(load_file(str(file)))
        self.w = {name: np.asarray(t, dtype=np.float64) for name, t in raw.items()}

    def _rms(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        eps = self.cfg.get("rms_norm_eps", 1e-5)
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    def _rope(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        # x: [T, heads, dh]
        dh = x.shape[-1]
        theta = self.cfg.get("rope_theta", 10000.0)
        inv = 1.0 / theta ** (np.arange(0, dh, 2, dtype=np.float64) / dh)
        ang = positions[:, None] * inv[None, :]  # [T, dh/2]
        cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=-1)[:, None, :]
        sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=-1)[:, None, :]
        half = dh // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rotated * sin

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits [T, vocab] for every position of ``ids``."""
        cfg, w = self.cfg, self.w
        n_heads = cfg["num_attention_heads"]
        n_kv = cfg.get("num_key_value_heads", n_heads)
        dh = cfg["hidden_size"] // n_heads
        t = len(ids)
        pos = np.arange(t, dtype=np.float64)
        x = w["model.embed_tokens.weight"][np.asarray(ids)]
        mask = np.triu(np.full((t, t), -np.inf), k=1)
        for layer in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            h = self._rms(x, w[p + "input_layernorm.weight"])
            q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(t, n_heads, dh)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(t, n_kv, dh)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(t, n_kv, dh)
            q, k = self._rope(q, pos), self._rope(k, pos)
            rep = n_heads // n_kv
            k = np.repeat(k, rep, axis=1)  # head h -> kv head h // rep
            v = np.repeat(v, rep, axis=1)
            scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(dh) + mask
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probs = scores / scores.sum(axis=-1, keepdims=True)
            attn = np.einsum("hts,shd->thd", probs, v).reshape(t, n_heads * dh)
            x = x + attn @ w[p + "self_attn.o_proj.weight"].T
            h = self._rms(x, w[p + "post_attention_layernorm.weight"])
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            up = h @ w[p + "mlp.up_proj.weight"].T
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
        x = self._rms(x, w["model.norm.weight"])
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        if cfg.get("tie_word_embeddings", False):
            head = w["model.embed_tokens.weight"]
        return x @ head.T

    def generate(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation of ``prompt`` (ties -> lowest id), ``max_new_tokens`` long."""
        ids = list(prompt)
        out: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(np.argmax(self.logits(ids)[-1]))
            out.append(nxt)
            ids.append(nxt)
        return out

    def margin(self, ids: list[int]) -> float:
        """Gap between the best and second-best logit at the last position (tie risk)."""
        top = np.sort(self.logits(ids)[-1])
        return float(top[-1] - top[-2])
