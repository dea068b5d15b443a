"""Text generation with the carried state: block-by-block prefill, token-by-token decoding.

`Generator` is the front end a causal LM delegates `generate()` to: prompts (strings,
ids, KerasHub-style dicts) in, the compiled step, stop tokens and strings out. The compiled `generate_step` keeps a fixed-size cache (the window's keys and
values and the state vectors of every layer), so memory does not grow with the
prompt or the output:

1. prefill: the prompt's whole blocks shared by every row run block by block
   through `call_with_state` (parallel inside a block, one block of activations
   at a time);
2. decode: one token per step through `backbone.decode_step`; the rest of each
   prompt is fed token by token, then the sampler picks tokens. After every
   block's last token the recurrent state advances, exactly as in training.

When the output is decoded to text, the sampler only ever sees the ids the tokenizer
can decode (`samplable_ids`): the others' logits are -inf inside the compiled step.
"""

import numpy as np
from keras import ops

from keras_brt.models.compiling import compile_function
from keras_brt.models.samplers import get_sampler


class Generator:
    """The generation front end of one causal LM: its default sampler and tokenizer, and
    the compiled `generate_step` for each sampler it has used.

    A plain object rather than a Keras layer: the model holds it without adding tracked
    state (the tokenizer is a preprocessing helper, not a sublayer saved with the weights),
    and its sampler or tokenizer can change after the model is built.

    Args:
        sampler: the default sampler: a name, a `keras_brt.models.Sampler` or a
            `keras_hub.samplers.Sampler`.
        tokenizer: the default tokenizer for string prompts, or None.

    Example:

    ```python
    lm.generator.tokenizer = keras_brt.data.ByteTokenizer()
    lm.generate("def main():", max_length=64)
    ```
    """

    def __init__(self, sampler="greedy", tokenizer=None):
        self.sampler = get_sampler(sampler)
        self.tokenizer = tokenizer
        self._functions = {}  # sampler key -> compiled generate_step

    def __call__(self, lm, inputs, max_length, sampler=None, stop_token_ids=None,
                 strip_prompt=False, seed=None, tokenizer=None):
        """Continues `inputs` with `lm`; the arguments are `lm.generate()`'s."""
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        vocabulary_size = lm.backbone.vocabulary_size
        token_ids, lengths, strings, single = prepare_prompts(
            inputs, vocabulary_size, max_length, tokenizer
        )
        stop = stop_ids(stop_token_ids, tokenizer, vocabulary_size)
        sampler = get_sampler(sampler) if sampler is not None else self.sampler
        uniforms = np.random.default_rng(seed).random(token_ids.shape[::-1], dtype="float32")
        # Text out: only ids the tokenizer can decode are sampled. Ids out: no mask at all.
        allowed = samplable_ids(tokenizer, vocabulary_size, stop) if strings else None
        arguments = (token_ids, lengths, uniforms, stop) + ((allowed,) if strings else ())
        output, ended = self.compiled(lm, sampler, masked=strings)(*arguments)
        return finish_outputs(np.asarray(output), lengths, stop, strip_prompt,
                              tokenizer if strings else None, single)

    def compiled(self, lm, sampler, masked=False):
        """The XLA-compiled generate step of `lm` with `sampler`, with or without a mask
        of the samplable ids (an argument, so any tokenizer's mask reuses it), made once
        and reused."""
        key = (type(sampler).__name__, repr(sorted(sampler.get_config().items())), masked)
        if key not in self._functions:
            def step(*arguments):  # token_ids, lengths, uniforms, stop[, allowed]
                return generate_step(lm, sampler, *arguments)

            self._functions[key] = compile_function(lm, step)
        return self._functions[key]


def generate_step(lm, sampler, token_ids, prompt_lengths, uniforms, stop_token_ids, allowed=None,
                  pad_id=0):
    """Generates into `token_ids` `(B, L)` after each row's prompt.

    Args:
        lm: the causal LM.
        sampler: `(logits (B, V), uniform (B,)) -> ids (B,)`.
        token_ids: int `(B, L)`: prompts left-aligned, then padding.
        prompt_lengths: int `(B,)`, each >= 1.
        uniforms: float `(L, B)`: the random draw for each position.
        stop_token_ids: int `(n,)`; a row ends after generating one of them.
        allowed: bool `(V,)` or None: the ids that may be sampled (see
            `samplable_ids`); the others' logits are -inf before the sampler sees
            them, and a sampler that returns one anyway (one that picks a token of
            zero probability) gets the most likely allowed id instead. None: every id,
            and the step is exactly the unmasked one.
        pad_id: written after a row has ended.

    Returns:
        `(token_ids (B, L), ended (B,))`.
    """
    backbone = lm.backbone
    w = backbone.block_size
    batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
    # Whole blocks run in parallel; the block holding each prompt's last token
    # goes through the decoding loop, so decoding always starts on a prompt token.
    num_blocks = (ops.min(prompt_lengths) - 1) // w

    # One block of slack: the loop body is compiled even when it never runs, and its
    # static (B, W) slice must fit however short max_length is.
    source = ops.pad(token_ids, ((0, 0), (0, w)))  # (B, L + W)

    def prefill(n, state):
        block = ops.slice(source, (0, n * w), (batch, w))  # (B, W)
        _, state = lm.call_with_state(block, state)
        return n + 1, state

    _, state = ops.while_loop(
        lambda n, state: n < num_blocks, prefill, (ops.convert_to_tensor(0, "int32"),
                                                   lm.initial_state(batch))
    )
    cache = backbone.decode_cache(state)

    def decode(t, ids, cache, ended):
        token = ops.take(ids, t, axis=1)  # (B,)
        hidden, cache = backbone.decode_step(token, t % w, cache)  # (B, D)
        logits = lm.compute_logits(hidden[:, None])[:, 0]  # (B, V) float32
        if allowed is not None:
            logits = ops.where(allowed[None, :], logits, float("-inf"))  # (B, V)
        chosen = sampler(logits, ops.take(uniforms, t + 1, axis=0))  # (B,)
        if allowed is not None:
            best = ops.cast(ops.argmax(logits, axis=-1), chosen.dtype)  # (B,)
            chosen = ops.where(ops.take(allowed, chosen, axis=0), chosen, best)  # (B,)
        forced = t + 1 < prompt_lengths  # (B,) still inside the prompt
        following = ops.where(
            forced, ops.take(ids, t + 1, axis=1), ops.where(ended, pad_id, chosen)
        )  # (B,)
        is_stop = ops.any(following[:, None] == stop_token_ids[None, :], axis=1)  # (B,)
        ended = ops.logical_or(ended, ops.logical_and(ops.logical_not(forced), is_stop))
        ids = ops.slice_update(ids, (0, t + 1), ops.cast(following, ids.dtype)[:, None])  # (B, L)
        return t + 1, ids, cache, ended

    def running(t, ids, cache, ended):
        return ops.logical_and(t < length - 1, ops.logical_not(ops.all(ended)))

    _, token_ids, _, ended = ops.while_loop(
        running, decode, (num_blocks * w, token_ids, cache, ops.zeros((batch,), "bool"))
    )
    return token_ids, ended


def prepare_prompts(inputs, vocabulary_size, max_length, tokenizer=None):
    """Prompts (strings, id sequences, a 2-D array or a KerasHub-style dict) →
    `(token_ids (B, L) int32, lengths (B,), returned_strings, single)`."""
    single = isinstance(inputs, str) or (
        isinstance(inputs, (list, tuple)) and inputs and np.ndim(inputs[0]) == 0
        and not isinstance(inputs[0], str)
    )
    if single:
        inputs = [inputs]
    strings = isinstance(inputs, (list, tuple)) and bool(inputs) and isinstance(inputs[0], str)
    if strings:
        if tokenizer is None:
            raise ValueError(
                "String prompts need a tokenizer: pass `tokenizer=` or set `lm.generator.tokenizer`. "
                f"Received: inputs={inputs[:2]!r}"
            )
        bos = getattr(tokenizer, "bos_id", 1)
        prompts = [np.concatenate([[bos], np.asarray(tokenizer(text), "int64")]) for text in inputs]
    elif isinstance(inputs, dict):
        ids = np.asarray(inputs["token_ids"])
        mask = np.asarray(inputs.get("padding_mask", np.ones_like(ids)), bool)
        prompts = [row[m] for row, m in zip(ids, mask)]
    else:
        prompts = [np.asarray(p) for p in inputs]
    if not prompts:
        raise ValueError(f"`inputs` holds no prompt. Received: inputs={inputs!r}")
    for i, prompt in enumerate(prompts):
        if prompt.ndim != 1 or prompt.size == 0:
            raise ValueError(
                f"Every prompt needs at least one token id (strings get a BOS). Received: prompt {i} "
                f"with shape {prompt.shape}"
            )
        if not np.issubdtype(prompt.dtype, np.integer):
            raise ValueError(f"Prompt token ids must be integers. Received: dtype={prompt.dtype} "
                             f"in prompt {i}")
        if prompt.min() < 0 or prompt.max() >= vocabulary_size:
            raise ValueError(
                f"Prompt token ids must lie in [0, vocabulary_size={vocabulary_size}). Received: "
                f"{prompt[(prompt < 0) | (prompt >= vocabulary_size)][:5].tolist()} in prompt {i}"
            )
    longest = max(len(p) for p in prompts)
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length <= longest:
        raise ValueError(
            f"`max_length` (prompt plus generated tokens) must be an integer above the longest "
            f"prompt ({longest} tokens). Received: max_length={max_length!r}"
        )
    token_ids = np.zeros((len(prompts), int(max_length)), "int32")
    for i, prompt in enumerate(prompts):
        token_ids[i, :len(prompt)] = prompt
    lengths = np.array([len(p) for p in prompts], "int32")
    return token_ids, lengths, strings, single


def stop_ids(stop_token_ids, tokenizer, vocabulary_size):
    """`stop_token_ids` (ids, `"auto"` for the tokenizer's EOS, or None) as an int32 array."""
    if stop_token_ids == "auto":
        stop_token_ids = () if tokenizer is None else (getattr(tokenizer, "eos_id", 2),)
    stop = np.asarray(list(stop_token_ids or ()), "int32").reshape(-1)
    if stop.size and (stop.min() < 0 or stop.max() >= vocabulary_size):
        raise ValueError(
            f"`stop_token_ids` must lie in [0, vocabulary_size={vocabulary_size}). "
            f"Received: stop_token_ids={stop.tolist()}"
        )
    return stop


def tokenizer_vocabulary_size(tokenizer):
    """The number of ids `tokenizer` can decode: its `vocabulary_size` (an attribute, as
    keras_brt's tokenizers have, or a method, as KerasHub's), or None when it has none."""
    size = getattr(tokenizer, "vocabulary_size", None)
    if callable(size):
        size = size()
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        return None
    return int(size)


def samplable_ids(tokenizer, vocabulary_size, stop_token_ids=()):
    """bool `(vocabulary_size,)`: the ids `generate()` may sample when it decodes its
    output with `tokenizer`.

    Left out: the ids the tokenizer cannot decode, those at or above its own
    vocabulary size (the byte presets' 264 ids hold `ByteTokenizer`'s 259 and 5 of
    padding), and its padding and BOS ids (`pad_id`, `bos_id`), which decode to nothing
    and are never a training target (every document starts with a BOS; padding has no
    weight). Its EOS and every id of `stop_token_ids` inside its vocabulary stay
    samplable, so that rows can stop.
    """
    allowed = np.ones((vocabulary_size,), bool)
    size = tokenizer_vocabulary_size(tokenizer)
    if size is not None:
        allowed[size:] = False
    for name in ("pad_id", "bos_id"):
        special = getattr(tokenizer, name, None)
        if isinstance(special, (int, np.integer)) and 0 <= special < vocabulary_size:
            allowed[special] = False
    stops = np.asarray(stop_token_ids, "int64").reshape(-1)
    allowed[stops[stops < (vocabulary_size if size is None else min(size, vocabulary_size))]] = True
    if not allowed.any():
        raise ValueError(
            "The tokenizer can decode none of the model's ids, so no text can be generated. "
            f"Received: tokenizer={tokenizer!r} with vocabulary_size={size} for a model of "
            f"vocabulary_size={vocabulary_size}"
        )
    return allowed


def finish_outputs(output, lengths, stop, strip_prompt, tokenizer, single):
    """The generated `(B, L)` ids as `generate()` returns them: masked after each row's
    first stop token, optionally without the prompt (left-aligned), as strings when a
    `tokenizer` is given (one string for a `single` prompt)."""
    positions = np.arange(output.shape[1])[None]
    stops = np.isin(output, stop) & (positions >= lengths[:, None])
    first_stop = np.where(stops.any(1), stops.argmax(1), output.shape[1] - 1)
    mask = positions <= first_stop[:, None]
    if strip_prompt:
        mask &= positions >= lengths[:, None]
    if tokenizer is not None:
        texts = [tokenizer.detokenize(row[m]) for row, m in zip(output, mask)]
        return texts[0] if single else texts
    if strip_prompt:  # Left-align what was generated.
        shift = [np.concatenate([row[m], np.zeros(len(row) - m.sum(), row.dtype)]) for row, m in
                 zip(output, mask)]
        mask = np.arange(output.shape[1])[None] < mask.sum(1)[:, None]
        output = np.stack(shift)
    return {"token_ids": np.where(mask, output, 0), "padding_mask": mask}
