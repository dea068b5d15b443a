"""Attention helpers shared by the sliding-window layer and the recurrent cell.

Size glossary: B batch, Q queries, S keys, H heads, K head size, W block size.

Attention follows google-research/meliad (the official code of the paper):
queries and keys are L2-normalised per head and the logits are
`|scale_h| * (q̂ · k̂ + bias)` with a learned per-head `scale_h` (no 1/√K).
"""

import keras
import numpy as np
from keras import ops

# Logit given to masked keys (meliad uses the same constant).
MASKED_LOGIT = -1e6


def l2_normalize(x, epsilon=1e-6):
    """L2-normalises the last axis in float32 and casts back.

    A zero vector stays zero, which is what makes null (padded or empty-cache)
    keys contribute nothing but a constant logit.
    """
    x32 = ops.cast(x, "float32")
    x32 = x32 * ops.rsqrt(ops.sum(ops.square(x32), axis=-1, keepdims=True) + epsilon)
    return ops.cast(x32, x.dtype)


def window_mask(block_size):
    """Strictly causal mask of one block of queries over `[previous ‖ current]` keys.

    Query `i` of the current block may read key `j` of the `2W` concatenated keys
    iff `i <= j < i + W`: exactly the `W` tokens before it, never itself. This
    is meliad's window ("leaving out self-attention slightly improves
    perplexity and simplifies generation").

    Returns:
        A numpy bool array of shape `(W, 2W)`.
    """
    query = np.arange(block_size)[:, None]
    key = np.arange(2 * block_size)[None, :]
    return (key >= query) & (key < query + block_size)


def attend(query, key, value, scale, bias=None, mask=None, dropout_mask=None):
    """Multi-head attention over already projected, normalised heads.

    Without a dropout mask this runs `keras.ops.dot_product_attention` (cuDNN's
    fused flash attention on a GPU under the JAX backend: no `(B, H, Q, S)`
    logits are kept in memory), with the per-head scale folded into the queries
    and the position bias and mask folded into one `(1, H, Q, S)` bias. With a
    dropout mask, with one query per row (decoding), or after
    `keras.config.disable_flash_attention()`, it runs the explicit reference
    computation with float32 logits. Both compute the
    same function (tests check it).

    Args:
        query: `(B, Q, H, K)`.
        key: `(B, S, H, K)`.
        value: `(B, S, H, K)`.
        scale: `(H,)` learned per-head logit scale; its absolute value is used.
        bias: optional `(H, Q, S)` additive logit bias (before the scale).
        mask: optional bool `(Q, S)`; False keys get `MASKED_LOGIT`.
        dropout_mask: optional `(H, Q, S)` (or broadcastable) multiplier for
            the attention probabilities.

    Returns:
        `(B, Q, H, K)` in the dtype of `value`.
    """
    fused = dropout_mask is None and keras.config.is_flash_attention_enabled() is not False
    # One query per row (decoding) has no logits worth fusing; the plain path is faster there.
    if fused and query.shape[1] != 1:
        return fused_attend(query, key, value, scale, bias=bias, mask=mask)
    return reference_attend(query, key, value, scale, bias, mask, dropout_mask)


def fused_attend(query, key, value, scale, bias=None, mask=None):
    """`attend` through `keras.ops.dot_product_attention` (no dropout)."""
    scale = ops.abs(ops.cast(scale, "float32"))  # (H,)
    query = ops.cast(ops.cast(query, "float32") * scale[:, None], value.dtype)  # (B, Q, H, K)
    combined = None
    if bias is not None:
        combined = ops.cast(bias, "float32") * scale[:, None, None]  # (H, Q, S)
    if mask is not None:
        combined = 0.0 if combined is None else combined
        combined = ops.where(mask[None], combined, MASKED_LOGIT)  # (H, Q, S)
    return ops.dot_product_attention(
        query,
        ops.cast(key, value.dtype),
        value,
        bias=None if combined is None else ops.cast(combined, value.dtype)[None],  # (1, H, Q, S)
        scale=1.0,
        flash_attention=keras.config.is_flash_attention_enabled(),
    )  # (B, Q, H, K)


def reference_attend(query, key, value, scale, bias=None, mask=None, dropout_mask=None):
    """`attend` written out, with float32 logits and optional probability dropout."""
    logits = ops.einsum(
        "bqhk,bshk->bhqs", ops.cast(query, "float32"), ops.cast(key, "float32")
    )  # (B, H, Q, S)
    if bias is not None:
        logits = logits + ops.cast(bias, "float32")[None]
    logits = logits * ops.abs(ops.cast(scale, "float32"))[None, :, None, None]
    if mask is not None:
        logits = ops.where(mask[None, None], logits, MASKED_LOGIT)
    probs = ops.softmax(logits, axis=-1)  # (B, H, Q, S)
    if dropout_mask is not None:
        probs = probs * ops.cast(dropout_mask, probs.dtype)
    probs = ops.cast(probs, value.dtype)
    return ops.einsum("bhqs,bshk->bqhk", probs, value)  # (B, Q, H, K)


def join_window(previous, current):
    """The window `[previous block ‖ current block]`: 2 × `(B, W, H, K)` → `(B, 2W, H, K)`."""
    return ops.concatenate([ops.cast(previous, current.dtype), current], axis=1)


def block_windows(previous, blocks):
    """Every block's window at once: block n reads `[block n-1 ‖ block n]`, block 0
    reads the carried `previous` `(B, W, H, K)`. `(B, N, W, H, K)` → `(B, N, 2W, H, K)`."""
    before = ops.concatenate([ops.cast(previous, blocks.dtype)[:, None], blocks[:, :-1]], axis=1)
    return ops.concatenate([before, blocks], axis=2)


def window_mask_row(block_size, index):
    """Row `index` of `window_mask(block_size)` for a traced scalar index: `(1, 2W)`."""
    key = ops.arange(2 * block_size)[None, :]  # (1, 2W)
    return ops.logical_and(key >= index, key < index + block_size)


def write_position(cache, update, index):
    """`cache` `(B, W, H, K)` with position `index` replaced by `update` `(B, 1, H, K)`."""
    at = ops.arange(ops.shape(cache)[1]) == index  # (W,)
    return ops.where(at[None, :, None, None], ops.cast(update, cache.dtype), cache)


def extend_window(prev_keys, prev_values, keys, values, key, value, index):
    """One decoded token's view of its window.

    Writes the token's `key`/`value` `(B, 1, H, K)` at `index` of the current
    block's caches `keys`/`values` `(B, W, H, K)` and returns
    `(keys, values, window_keys, window_values, mask)`: the updated caches, the
    `(B, 2W, H, K)` window `[previous block ‖ current block]` and the `(1, 2W)`
    mask row of a query at `index`.
    """
    keys = write_position(keys, key, index)  # (B, W, H, K)
    values = write_position(values, value, index)  # (B, W, H, K)
    window_keys, window_values = join_window(prev_keys, keys), join_window(prev_values, values)
    return keys, values, window_keys, window_values, window_mask_row(keys.shape[1], index)
