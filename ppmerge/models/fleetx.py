"""FleetX / paddlenlp key layouts → ours (paddlenlp `GPTForSequenceClassification` naming).

FleetX GPT (and paddlenlp with `fuse_attention_qkv=True`) compute q, k, v with one `qkv_proj`
Linear, weight `[hidden, 3 * hidden]`. Its output is reshaped to `[batch, seq, num_heads, 3 * head_dim]`
and split in three along the last axis, so the output columns are laid out as
`[num_heads, 3, head_dim]`: head 0's q, k, v, then head 1's q, k, v, ... (head-interleaved, not
three contiguous q | k | v blocks as in GPT-2). The bias follows the same layout. Separate
`q_proj` / `k_proj` / `v_proj` weights are `[hidden, hidden]` with columns `[num_heads, head_dim]`."""
import numpy as np

from ppmerge.errors import CheckpointError

FUSED = ".self_attn.qkv_proj."
PARTS = ("q_proj", "k_proj", "v_proj")


def split_qkv(fused, num_heads):
    """Fused qkv weight `[in, 3H]` (or bias `[3H]`) → (q, k, v), each `[in, H]` (or `[H]`)."""
    width = fused.shape[-1]
    if width % (3 * num_heads):
        raise CheckpointError(f"fused qkv of width {width} cannot hold 3 x {num_heads} heads")
    head_dim = width // (3 * num_heads)
    per_head = fused.reshape(fused.shape[:-1] + (num_heads, 3, head_dim))
    return tuple(np.ascontiguousarray(per_head[..., i, :]).reshape(fused.shape[:-1] + (width // 3,))
                 for i in range(3))


def fuse_qkv(q, k, v, num_heads):
    """Inverse of `split_qkv`: (q, k, v) → the head-interleaved fused tensor."""
    width = q.shape[-1]
    head_dim = width // num_heads
    heads = [x.reshape(x.shape[:-1] + (num_heads, 1, head_dim)) for x in (q, k, v)]
    return np.concatenate(heads, axis=-2).reshape(q.shape[:-1] + (3 * width,))


def has_fused_qkv(state_dict):
    return any(FUSED in key for key in state_dict)


def split_fused_state_dict(state_dict, num_heads):
    """Replace every `…self_attn.qkv_proj.{weight,bias}` by `q_proj`, `k_proj`, `v_proj` (key order kept)."""
    out = {}
    for key, value in state_dict.items():
        if FUSED in key:
            prefix, suffix = key.split(FUSED)
            for part, array in zip(PARTS, split_qkv(np.asarray(value), num_heads)):
                out[f"{prefix}.self_attn.{part}.{suffix}"] = array
        else:
            out[key] = value
    return out


def fuse_state_dict(state_dict, num_heads):
    """Separate q/k/v → FleetX's fused `qkv_proj` (the exact inverse of `split_fused_state_dict`)."""
    out = {}
    for key, value in state_dict.items():
        if ".self_attn.q_proj." in key:
            prefix, suffix = key.split(".self_attn.q_proj.")
            q, k, v = (np.asarray(state_dict[f"{prefix}.self_attn.{part}.{suffix}"]) for part in PARTS)
            out[f"{prefix}{FUSED}{suffix}"] = fuse_qkv(q, k, v, num_heads)
        elif ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue
        else:
            out[key] = value
    return out


def normalize_prefixes(state_dict):
    """Bring FleetX / paddlenlp key prefixes to ours.

    `gpt.…` (FleetX GPTForPretraining, paddlenlp task models) stays; a bare `GPTModel`'s
    `embeddings.…` / `decoder.…` gets `gpt.`; the LM head (`lm_head.…`, tied to the word embeddings
    in GPT) is dropped, it has no place in a classifier."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("lm_head."):
            continue
        if key.startswith(("embeddings.", "decoder.")):
            key = "gpt." + key
        out[key] = value
    return out
