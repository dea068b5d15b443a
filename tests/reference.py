"""A plain numpy re-implementation of the paper's layer math, token by token.

Written independently of the package (loops over positions, no blocking, the
T5 bucket formula in scalar Python), so that comparing it with the Keras
layers checks the masking, the window, the bias, the sharing of keys/values
and the gates, not just shapes.
"""

import math

import numpy as np


def t5_bucket(distance, num_buckets=32, max_distance=128):
    n = max(distance, 0)
    exact = num_buckets // 2
    if n < exact:
        return n
    large = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (num_buckets - exact))
    return min(large, num_buckets - 1)


def rms(x, scale):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-6) * scale


def l2(x):
    return x / np.sqrt(np.sum(x**2, axis=-1, keepdims=True) + 1e-6)


def softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def heads(x, groups, h, k):
    return np.split(x.reshape(x.shape[:-1] + (groups, h, k)), groups, axis=-3)


def attention_one(q, keys, values, scale, bias=None):
    """q (H, K), keys/values (S, H, K), bias (H, S) -> (H, K)."""
    logits = np.einsum("hk,shk->hs", q, keys)
    if bias is not None:
        logits = logits + bias
    probs = softmax(logits * np.abs(scale)[:, None])
    return np.einsum("hs,shk->hk", probs, values)


def w(variable):
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable, "float64")


def token_window(position, keys, values, prev_keys, prev_values, block_size):
    """Keys/values of the W tokens before `position` (prev cache for negatives)."""
    idx = range(position - block_size, position)
    ks = np.stack([keys[i] if i >= 0 else prev_keys[block_size + i] for i in idx])
    vs = np.stack([values[i] if i >= 0 else prev_values[block_size + i] for i in idx])
    return ks, vs, [position - i for i in idx]


def sliding_layer(layer, x, prev_keys, prev_values):
    """Reference of SlidingWindowTransformerLayer for one row: x (T, D)."""
    h, k, win = layer.num_heads, layer.head_dim, layer.block_size
    table = w(layer.relative_position.embeddings)
    q, keys, values = heads(rms(x, w(layer.norm.scale)) @ w(layer.qkv_dense.kernel), 3, h, k)
    q, keys, values = l2(q[:, 0]), l2(keys[:, 0]), values[:, 0]
    out = []
    for p in range(x.shape[0]):
        ks, vs, dist = token_window(p, keys, values, prev_keys, prev_values, win)
        bias = np.stack([table[:, t5_bucket(d)] for d in dist], axis=1)
        out.append(attention_one(q[p], ks, vs, w(layer.attention_scale), bias).reshape(-1))
    y = x + np.stack(out) @ w(layer.output_dense.kernel)
    y = y + feed_forward(layer.feed_forward, y)
    return y, keys[-win:], values[-win:]


def feed_forward(ffn, x, return_hidden=False):
    hidden = np.maximum(rms(x, w(ffn.norm.scale)) @ w(ffn.hidden_dense.kernel), 0)
    out = hidden @ w(ffn.output_dense.kernel)
    return (out, hidden) if return_hidden else out


def gate(layer, old, update, gate_input):
    if hasattr(layer, "forget_dense"):
        f = sigmoid(gate_input @ w(layer.forget_dense.kernel) + w(layer.forget_dense.bias) + 1)
        i = sigmoid(gate_input @ w(layer.input_dense.kernel) + w(layer.input_dense.bias) - 1)
        return f * old + i * update
    g = sigmoid(w(layer.bias))
    return g * old + (1 - g) * update


def cell_step(cell, x, state, prev_keys, prev_values):
    """Reference of BlockRecurrentCell for one row and one block: x (W, D), state (S, D)."""
    h, k, win = cell.num_heads, cell.head_dim, cell.block_size
    table = w(cell.relative_position.embeddings)
    q, keys, values, q2 = heads(rms(x, w(cell.token_norm.scale)) @ w(cell.token_qkv_dense.kernel), 4, h, k)
    q, keys, values, q2 = l2(q[:, 0]), l2(keys[:, 0]), values[:, 0], l2(q2[:, 0])
    s = rms(state, w(cell.state_norm.scale)) + w(cell.state_ids)
    sq, sk, sv, sq2 = heads(s @ w(cell.state_qkv_dense.kernel), 4, h, k)
    sq, sk, sv, sq2 = l2(sq[:, 0]), l2(sk[:, 0]), sv[:, 0], l2(sq2[:, 0])
    rows = []
    for p in range(win):
        ks, vs, dist = token_window(p, keys, values, prev_keys, prev_values, win)
        bias = np.stack([table[:, t5_bucket(d)] for d in dist], axis=1)
        a = attention_one(q[p], ks, vs, w(cell.token_self_scale), bias)
        c = attention_one(q2[p], sk, sv, w(cell.token_cross_scale))
        rows.append(np.concatenate([a, c], axis=0).reshape(-1))
    y = x + np.stack(rows) @ w(cell.token_output_dense.kernel)
    y = y + feed_forward(cell.feed_forward, y)
    all_keys = np.concatenate([prev_keys, keys])
    all_values = np.concatenate([prev_values, values])
    state_heads = np.stack(
        [
            np.concatenate(
                [
                    attention_one(sq[i], sk, sv, w(cell.state_self_scale)),
                    attention_one(sq2[i], all_keys, all_values, w(cell.state_cross_scale)),
                ],
                axis=0,
            ).reshape(-1)
            for i in range(state.shape[0])
        ]
    )
    if cell.state_mlp == "single":
        hidden = np.maximum(state_heads @ w(cell.state_hidden_dense.kernel), 0)
        new = gate(cell.state_gate, state, np.tanh(hidden @ w(cell.state_output_dense.kernel)), hidden)
    else:
        new = gate(cell.state_gate, state, state_heads @ w(cell.state_output_dense.kernel), state_heads)
        if cell.state_mlp == "dual":
            update, hidden = feed_forward(cell.state_feed_forward, new, return_hidden=True)
            new = gate(cell.state_ffn_gate, new, update, hidden)
    return y, new, keys, values
