"""Writing small GGUF files for the loader's tests, with the ``gguf`` package's writer.

The tiny model is written the way llama.cpp's converter writes a Llama: GGUF tensor names,
dimensions innermost first, and the Q/K rows permuted for rotation of adjacent pairs (the
converter's formula, written out here rather than taken from npud).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

from npud.llm.config import ModelConfig

_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf: str) -> str:
    """The GGUF name of an HF Llama tensor name."""
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{_LAYER[rest.removesuffix('.weight')]}.weight"


def converter_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf ``permute`` of Q/K rows."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_gguf(
    path: Path,
    config: ModelConfig,
    tensors: dict[str, np.ndarray],
    *,
    quant: GGMLQuantizationType | None = None,
    arch: str = "llama",
    skip: frozenset[str] = frozenset(),
) -> Path:
    """Write ``tensors`` (HF names, float32) as a Llama GGUF; matrices in ``quant`` if given.

    ``arch`` sets ``general.architecture``; tensors named in ``skip`` (GGUF names) are left out.
    """
    writer = GGUFWriter(str(path), arch)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_vocab_size(config.vocab_size)
    if config.eos_token_id is not None:
        writer.add_eos_token_id(config.eos_token_id)
    for hf, value in tensors.items():
        name = gguf_name(hf)
        if name in skip:
            continue
        w = np.ascontiguousarray(value, dtype=np.float32)
        if hf.endswith("q_proj.weight"):
            w = converter_permute(w, config.num_attention_heads)
        elif hf.endswith("k_proj.weight"):
            w = converter_permute(w, config.num_key_value_heads)
        if quant is not None and w.ndim == 2:
            writer.add_tensor(name, quantize(w, quant), raw_dtype=quant)
        else:
            writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
