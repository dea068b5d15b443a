"""What the recurrent state path is doing: scales, gate, attention entropy, gradient norms.

Used by bench/quality.py (`StateProbe`, every `--probe-every` steps) to answer "does the state
learn?" from the inside:

- the learned logit scales of the state's three attentions and the gate's bias (their
  trajectories over training);
- the entropy of the state's attention, as a fraction of the uniform entropy log(keys):
  states reading the 2W-token window (writing), states reading states, tokens reading the
  state (1.0 = spread evenly over every key; 0 = one key);
- gradient norms of one training batch's loss, per parameter group: the recurrent layer's
  state path (the parameters only the state uses) against its token path and the other
  (sliding-window) layers.
"""

import math
import re

import keras
import numpy as np
from keras import ops

from keras_brt.layers.attention import block_windows
from keras_brt.models.losses import token_cross_entropy
from keras_brt.training.optimizers import STATE_PATH
from keras_brt.models.state_layout import entry



def recurrent_cells(lm):
    backbone = lm.backbone
    return [(i, backbone.transformer_layers[i].cell) for i in backbone.recurrent_layer_indices]


def cell_parameters(cell):
    """{name: value} of the scales (mean |scale|) and the fixed gate's mean bias."""
    report = {}
    for v in cell.weights:
        name = v.path.split("/")[-1] if "gate" not in v.path else "/".join(v.path.split("/")[-2:])
        value = np.asarray(v)
        if name.endswith("scale") and "norm" not in v.path:
            report[name] = float(np.abs(value).mean())
        elif "gate" in v.path and name.endswith("bias"):
            report[name + "_mean"] = float(value.mean())
            report[name + "_sigmoid_mean"] = float((1 / (1 + np.exp(-value))).mean())
    return report


def _entropy(logits):
    """Mean entropy of softmax(logits) over the last axis, divided by log(keys)."""
    logits = logits - logits.max(-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(-1, keepdims=True)
    h = -(p * np.log(np.maximum(p, 1e-30))).sum(-1)
    return float(h.mean() / math.log(logits.shape[-1]))


def attention_entropy(lm, token_ids):
    """Entropy fractions of the first recurrent layer's three state attentions on `token_ids`
    `(B, T)` from the initial state, and the fraction of the state's attention mass on the
    window's current block (nothing for a `feedback=True` model)."""
    backbone = lm.backbone
    if backbone.feedback:
        # The layers below the recurrent one read the state block by block there; this
        # probe runs them on the whole input, so it does not measure Feedback models.
        return {}
    index, cell = recurrent_cells(lm)[0]
    state = backbone.initial_state(token_ids.shape[0])
    x = backbone.token_embedding(token_ids)
    for i in range(index):
        x, _, _ = backbone.transformer_layers[i](
            x, state[entry(i, "keys")], state[entry(i, "values")])
    h, k, w = cell.num_heads, cell.head_dim, cell.block_size
    batch, num_blocks = token_ids.shape[0], token_ids.shape[1] // w
    tokens = cell.token_projections(x)  # 4 × (B, T, H, K)
    by_block = lambda t: ops.reshape(t, (batch, num_blocks, w, h, k))  # (B, N, W, H, K)
    q_cross = by_block(tokens.cross_queries)
    window_keys = block_windows(state[entry(index, "keys")], by_block(tokens.keys))
    window_values = block_windows(state[entry(index, "values")], by_block(tokens.values))  # (B, N, 2W, H, K)
    scale = lambda s: np.abs(np.asarray(s, "float32"))[None, :, None, None]
    logit = lambda q, kk, s: np.einsum("bqhk,bshk->bhqs", np.asarray(q, "float32"),
                                       np.asarray(kk, "float32")) * scale(s)
    vectors = state[entry(index, "state")]
    write, self_read, token_read, current = [], [], [], []
    for n in range(num_blocks):
        states_read = cell.state_projections(vectors)
        token_read.append(_entropy(logit(q_cross[:, n], states_read.keys, cell.token_cross_scale)))
        self_read.append(_entropy(logit(states_read.self_queries, states_read.keys,
                                        cell.state_self_scale)))
        write_logits = logit(states_read.cross_queries, window_keys[:, n], cell.state_cross_scale)
        write.append(_entropy(write_logits))
        p = np.exp(write_logits - write_logits.max(-1, keepdims=True))
        current.append(float((p[..., w:].sum(-1) / p.sum(-1)).mean()))
        vectors = cell.advance(vectors, states_read, window_keys[:, n], window_values[:, n])
    return {"write_entropy": float(np.mean(write)), "state_self_entropy": float(np.mean(self_read)),
            "read_entropy": float(np.mean(token_read)), "write_mass_on_current_block": float(np.mean(current))}


def gradient_norms(lm, token_ids, targets, weights):
    """Gradient norm of the weighted loss per parameter group, for one batch from fresh lanes
    (JAX backend). Groups: every variable of the first recurrent cell by name, then the
    cell's state path and token path together, and all the other layers together."""
    import jax

    variables = lm.trainable_variables
    values = [v.value for v in variables]

    def loss(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            logits, _ = lm.call_with_state(token_ids)
            return ops.sum(token_cross_entropy(targets, logits) * weights) / ops.sum(weights)

    grads = jax.grad(loss)(values)
    index, cell = recurrent_cells(lm)[0]
    prefix = f"recurrent_cell_{index}/"
    groups = {"state_path": 0.0, "token_path": 0.0, "other_layers": 0.0}
    per_variable = {}
    for v, g in zip(variables, grads):
        sq = float(np.sum(np.square(np.asarray(g, "float32"))))
        if prefix in v.path:
            name = v.path.split(prefix, 1)[1]
            per_variable[name] = math.sqrt(sq)
            groups["state_path" if re.search(STATE_PATH, name) else "token_path"] += sq
        else:
            groups["other_layers"] += sq
    return {**{k: math.sqrt(v) for k, v in groups.items()}, "per_variable": per_variable}


class StateProbe(keras.callbacks.Callback):
    """Every `every` steps: the cell's scales and gate; at `deep_steps` also attention entropy
    and gradient norms on a fixed batch `(token_ids, targets, weights)`."""

    def __init__(self, every, batch=None, deep_every=None):
        super().__init__()
        self.every, self.batch, self.deep_every = every, batch, deep_every
        self.rows = []

    def _record(self, step):
        if not recurrent_cells(self.model):
            return
        row = {"step": step, **cell_parameters(recurrent_cells(self.model)[0][1])}
        if self.batch is not None and self.deep_every and step % self.deep_every == 0:
            ids, targets, weights = self.batch
            row.update(attention_entropy(self.model, ids))
            if keras.backend.backend() == "jax":
                row["gradient_norms"] = gradient_norms(self.model, ids, targets, weights)
        self.rows.append(row)

    def on_train_begin(self, logs=None):
        self._record(0)

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every == 0:
            self._record(batch + 1)
