"""Where a training step's time goes: each part of the model timed on its own (JAX).

Forward + backward of each part at the shapes of one training step, compiled with
XLA, median of several calls after warm-up, every part in the same process:

- `matmul`: one (B*T, D) x (D, 4D) bf16 matmul, the device's practical peak;
- `head`: embedding, tied output layer and cross-entropy;
- `ffn`: one MLP block;
- `attention`: the window attention of one layer alone, `(B*N, W, H, K)` queries
  over `(B*N, 2W, H, K)` keys with the position bias and the mask;
- `slide layer` / `recurrent layer`: one whole layer of each kind;
- `model`: the whole backbone + loss, gradients only (no optimizer).

Parts that contain attention are timed twice: `fused` (the default:
`keras.ops.dot_product_attention`, cuDNN flash attention on a GPU) and
`reference` (after `keras.config.disable_flash_attention()`: float32 logits
written out). The table gives ms, TFLOP/s where the count is exact, and whether
XLA's compiled program contains a cuDNN fused-attention call.

    KERAS_BACKEND=jax python bench/profile_parts.py --size paper --dtype mixed_bfloat16
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import speed  # noqa: E402

import keras_brt  # noqa: E402
from keras_brt.layers.attention import attend, window_mask  # noqa: E402
from keras_brt.models.state_layout import entry


def timed(fn, args, steps):
    """Median seconds of `fn(*args)` after compiling, and whether cuDNN attention is in it."""
    compiled = jax.jit(fn).lower(*args).compile()
    text = compiled.as_text()
    fused = "fmha" in text or "cudnn$fmha" in text or "__cudnn" in text
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), fused


def layer_grad(layer, *inputs):
    """Forward + backward of `layer` wrt its weights and first input."""
    trainable = [v.value for v in layer.trainable_variables]
    fixed = [v.value for v in layer.non_trainable_variables]

    def loss(trainable, x, *rest):
        out, _ = layer.stateless_call(trainable, fixed, x, *rest, training=True)
        first = out[0] if isinstance(out, (list, tuple)) else out
        return jnp.mean(jnp.square(first.astype(jnp.float32)))

    return jax.grad(loss, argnums=(0, 1)), (trainable,) + inputs


def parts(size, dtype, steps, only=None):
    s = speed.SIZES[size]
    b, t, d, w = s["batch_size"], s["segment_length"], s["hidden_dim"], s["block_size"]
    h, k, v = s["num_heads"], s["head_dim"], s["vocabulary_size"]
    n = t // w
    compute = keras.mixed_precision.Policy(dtype).compute_dtype
    rng = np.random.default_rng(0)
    rows = []

    def add(name, variant, fn, args, flops=None):
        if only and name not in only:
            return
        seconds, fused = timed(fn, args, steps)
        row = {"part": name, "variant": variant, "ms": seconds * 1e3, "cudnn_attention": fused}
        if flops:
            row["tflops"] = flops / seconds / 1e12
        rows.append(row)
        print(f"{name:<18}{variant:<11}{row['ms']:>9.2f} ms" +
              (f"{row['tflops']:>9.1f} TFLOP/s" if flops else "") + (" cuDNN" if fused else ""), flush=True)

    x = jnp.asarray(rng.standard_normal((b * t, d)), compute)
    kernel = jnp.asarray(rng.standard_normal((d, 4 * d)), compute)
    add("matmul", "-", lambda x, kernel: x @ kernel, (x, kernel), 2 * b * t * d * 4 * d)

    config = speed.backbone_config(size)
    backbone = keras_brt.models.BlockRecurrentTransformerBackbone(
        **config, recurrent_layers=(s["recurrent_index"],), dtype=dtype)
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM(backbone)
    backbone.build()
    ids = jnp.asarray(rng.integers(0, v, (b, t)), "int32")
    hidden = jnp.asarray(rng.standard_normal((b, t, d)), compute)

    table = backbone.token_embedding.embeddings.value

    def head(table, hidden, ids):
        return cross_entropy(tied_logits(table, hidden), ids)

    add("head", "-", jax.grad(head, argnums=(0, 1)), (table, hidden, ids), 6 * b * t * d * v)
    for variant, fn in head_variants(d).items():
        add("head+accuracy", variant, jax.grad(fn, argnums=(0, 1), has_aux=True), (table, hidden, ids),
            6 * b * t * d * v)

    slide = next(layer for i, layer in enumerate(backbone.transformer_layers)
                 if i not in backbone.recurrent_layer_indices)
    ffn_grad, ffn_args = layer_grad(slide.feed_forward, hidden)
    add("ffn", "-", ffn_grad, ffn_args, 6 * b * t * 2 * d * s["intermediate_dim"])

    rec_index = backbone.recurrent_layer_indices[0]
    recurrent = backbone.transformer_layers[rec_index]
    state = lm.initial_state(b)
    q = jnp.asarray(rng.standard_normal((b * n, w, h, k)), compute)
    kv = jnp.asarray(rng.standard_normal((b * n, 2 * w, h, k)), compute)
    scale = jnp.ones((h,), "float32") * 3.0
    bias = slide.window_bias()
    mask = jnp.asarray(window_mask(w))

    def make_attention(splits=1, with_bias=True, stack="heads"):
        def loss(q, keys, values, scale, bias):
            if not with_bias:
                out = attend(q, keys, values, scale)
            elif splits == 1:
                out = attend(q, keys, values, scale, bias=bias, mask=mask)
            elif stack == "batch":
                out = batch_split_attend(q, keys, values, scale, bias, mask, splits)
            else:
                out = split_attend(q, keys, values, scale, bias, mask, splits)
            return jnp.mean(jnp.square(out.astype(jnp.float32)))
        return jax.grad(loss, argnums=(0, 1, 2, 3, 4))

    def make_model():
        def model(trainable, ids):
            fixed = [var.value for var in backbone.non_trainable_variables]

            def loss(trainable):
                (x, _), _ = backbone.stateless_call(trainable, fixed, ids, training=True)
                return cross_entropy(tied_logits(trainable[0], x), ids)
            return jax.grad(loss)(trainable)
        return model

    assert backbone.trainable_variables[0] is backbone.token_embedding.embeddings
    # Window attention FLOPs as computed (W queries x 2W keys), forward + backward.
    attention_flops = 3 * 4 * b * n * h * w * 2 * w * k
    for variant in ("fused", "reference"):
        if variant == "reference":
            keras.config.disable_flash_attention()
        else:
            keras.config.enable_flash_attention()  # the default: fused where possible
        try:
            # A fresh function per variant: jax.jit caches traces by function.
            add("attention", variant, make_attention(), (q, kv, kv, scale, bias), attention_flops)
            if variant == "fused":
                add("attention", "no bias", make_attention(with_bias=False), (q, kv, kv, scale, bias),
                    attention_flops)
                for splits in (2, 4):
                    add("attention", f"split {splits}", make_attention(splits), (q, kv, kv, scale, bias),
                        attention_flops * (1 + 1 / splits) / 2)
                for splits in (2, 4, 8):
                    add("attention", f"rows {splits}", make_attention(splits, stack="batch"),
                        (q, kv, kv, scale, bias), attention_flops * (1 + 1 / splits) / 2)
            grad, args = layer_grad(slide, hidden, state["layer_0_keys"], state["layer_0_values"])
            add("slide layer", variant, grad, args)
            initial = [state[entry(rec_index, name)] for name in ("state", "keys", "values")]
            grad, args = layer_grad(recurrent, hidden, initial)
            add("recurrent layer", variant, grad, args)
            add("model", variant, make_model(), ([var.value for var in backbone.trainable_variables], ids))
        except Exception as error:  # e.g. cuDNN refusing a shape: reported, not timed.
            rows.append({"part": "-", "variant": variant, "error": f"{type(error).__name__}: {str(error)[:400]}"})
            print(f"{variant} FAILED: {rows[-1]['error']}", flush=True)
    keras.config.enable_flash_attention()
    return rows


def tied_logits(table, hidden):
    """The tied output layer: float32 `(..., V)` logits divided by √D, as the causal LM's."""
    return (hidden @ table.astype(hidden.dtype).T).astype(jnp.float32) / np.sqrt(hidden.shape[-1])


def cross_entropy(logits, ids):
    """Mean cross-entropy, the target's logit gathered (the loss before change 9)."""
    picked = jnp.take_along_axis(logits, ids[..., None], -1)[..., 0]
    return jnp.mean(jax.nn.logsumexp(logits, -1) - picked)


def head_variants(d):
    """Output layer + cross-entropy + top-1 accuracy, written several ways (loss, accuracy)."""

    def loss_and_accuracy(logits, ids, accuracy):
        if accuracy == "argmax":
            correct = jnp.argmax(logits, -1) == ids
        else:  # the target's logit is the largest one (shares the max with logsumexp)
            correct = jnp.take_along_axis(logits, ids[..., None], -1)[..., 0] >= jnp.max(logits, -1)
        return cross_entropy(logits, ids), jnp.mean(correct.astype(jnp.float32))

    def scaled_after(accuracy):
        def head(table, hidden, ids):
            return loss_and_accuracy(tied_logits(table, hidden), ids, accuracy)
        return head

    def scaled_before(accuracy):
        def head(table, hidden, ids):
            logits = ((hidden / np.sqrt(d)).astype(hidden.dtype) @ table.astype(hidden.dtype).T).astype(jnp.float32)
            return loss_and_accuracy(logits, ids, accuracy)
        return head

    return {"after+argmax": scaled_after("argmax"), "after+max": scaled_after("max"),
            "before+argmax": scaled_before("argmax"), "before+max": scaled_before("max")}


def split_attend(q, keys, values, scale, bias, mask, splits):
    """Window attention with the W queries cut into `splits` chunks, each reading only
    the W + W/splits keys it can see; chunks are stacked on the head axis (their bias and
    mask are the same, so one (1, splits*H, W/splits, W + W/splits) bias broadcasts)."""
    w = q.shape[1]
    c = w // splits
    span = w + c
    heads = lambda chunks: jnp.concatenate(chunks, axis=2)
    q_s = heads([q[:, j * c:(j + 1) * c] for j in range(splits)])  # (B, c, splits*H, K)
    k_s = heads([keys[:, j * c:j * c + span] for j in range(splits)])  # (B, span, splits*H, K)
    v_s = heads([values[:, j * c:j * c + span] for j in range(splits)])
    bias_s = jnp.concatenate([bias[:, :c, :span]] * splits, axis=0)  # (splits*H, c, span)
    out = attend(q_s, k_s, v_s, jnp.tile(scale, splits), bias=bias_s, mask=mask[:c, :span])
    h = q.shape[2]
    return jnp.concatenate([out[:, :, j * h:(j + 1) * h] for j in range(splits)], axis=1)  # (B, W, H, K)


def batch_split_attend(q, keys, values, scale, bias, mask, splits):
    """As `split_attend`, with the chunks stacked on the batch axis instead: the queries
    reshape in place to (B*splits, W/splits, H, K), and the Toeplitz bias and the mask of
    the first chunk, (H, W/splits, W + W/splits), serve every chunk."""
    b, w, h, k = q.shape
    c = w // splits
    span = w + c
    q_s = jnp.reshape(q, (b * splits, c, h, k))
    windows = lambda t: jnp.reshape(jnp.stack([t[:, j * c:j * c + span] for j in range(splits)], axis=1),
                                    (b * splits, span, h, k))
    out = attend(q_s, windows(keys), windows(values), scale, bias=bias[:, :c, :span], mask=mask[:c, :span])
    return jnp.reshape(out, (b, w, h, k))


def check_equal(size, dtype):
    """Fused vs reference attention on the same inputs: max |difference| of outputs and gradients."""
    s = speed.SIZES[size]
    w, h, k = s["block_size"], s["num_heads"], s["head_dim"]
    compute = keras.mixed_precision.Policy(dtype).compute_dtype
    rng = np.random.default_rng(1)
    q, kv = (jnp.asarray(rng.standard_normal((4, w, h, k)) / np.sqrt(k), compute),
             jnp.asarray(rng.standard_normal((4, 2 * w, h, k)) / np.sqrt(k), compute))
    vals = jnp.asarray(rng.standard_normal((4, 2 * w, h, k)), compute)
    scale = jnp.asarray(rng.uniform(2, 8, (h,)), "float32")
    # A bias that depends on the distance only, as the T5 bias does: table[h, query - key].
    table = jnp.asarray(rng.standard_normal((h, 2 * w)), "float32")
    distance = np.arange(w, 2 * w)[:, None] - np.arange(2 * w)[None, :] + w  # (W, 2W), in [1, 2W)
    mask = jnp.asarray(window_mask(w))

    def f(q, keys, values, scale, table):
        bias = table[:, distance]
        return jnp.sum(attend(q, keys, values, scale, bias=bias, mask=mask).astype(jnp.float32) * vals[:, :w].astype(jnp.float32))

    def splitter(split, splits):
        def f_split(q, keys, values, scale, table):
            bias = table[:, distance]
            return jnp.sum(split(q, keys, values, scale, bias, mask, splits).astype(jnp.float32)
                           * vals[:, :w].astype(jnp.float32))
        return f_split

    functions = {"split 2": splitter(split_attend, 2), "rows 4": splitter(batch_split_attend, 4)}
    results = {}
    for variant in ("split 2", "rows 4", "fused", "reference"):
        if variant == "reference":
            keras.config.disable_flash_attention()
        fn = functions.get(variant, f)
        out = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3, 4)))(q, kv, vals, scale, table)
        results[variant] = jax.tree_util.tree_map(lambda a: np.asarray(a, "float32"), out)
    keras.config.enable_flash_attention()
    names = ["value", "d_query", "d_keys", "d_values", "d_scale", "d_bias_table"]
    flat = {key: [value[0]] + list(value[1]) for key, value in results.items()}
    report = {}
    for variant in ("fused", "split 2", "rows 4"):
        for name, a, b in zip(names, flat[variant], flat["reference"]):
            report[f"{variant} {name}"] = {"max_abs_diff": float(np.max(np.abs(a - b))),
                                           "max_abs": float(np.max(np.abs(b)))}
            print(f"{variant} vs reference {name:<9} max|diff| {float(np.max(np.abs(a - b))):.3g} "
                  f"(max|reference| {float(np.max(np.abs(b))):.3g})")
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(speed.SIZES), default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--output", default=None)
    parser.add_argument("--parts", default=None, help="comma-separated parts to time (default: all)")
    args = parser.parse_args()
    keras.config.set_dtype_policy(args.dtype)
    agreement = check_equal(args.size, args.dtype)
    keras.config.set_dtype_policy("float32")
    rows = parts(args.size, args.dtype, args.steps, args.parts and args.parts.split(","))
    print(f"\nbackend=jax ({speed.device_kind()}) dtype={args.dtype} size={args.size}, "
          f"forward+backward, median of {args.steps}")
    by = {(r["part"], r["variant"]): r for r in rows if "ms" in r}
    for part in ("attention", "slide layer", "recurrent layer", "model"):
        if (part, "fused") in by and (part, "reference") in by:
            print(f"{part:<18} fused ÷ reference = {by[(part, 'fused')]['ms'] / by[(part, 'reference')]['ms']:.2f}")
    speed.write_jax_results(args.output, f"profile_{args.size}_jax_{args.dtype}.json",
                            dtype_policy=args.dtype, size=args.size, config=speed.SIZES[args.size],
                            steps=args.steps, agreement=agreement, rows=rows)


if __name__ == "__main__":
    main()
