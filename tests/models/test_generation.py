"""generate(): token-by-token decoding equals the full forward pass, samplers, stop tokens, compilation."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_brt.data import ByteTokenizer
from keras_brt.models import BlockRecurrentTransformerCausalLM, generation
from keras_brt.models.compiling import compile_function
from keras_brt.models import GreedySampler, RandomSampler, TopKSampler, TopPSampler, get_sampler
from tests.models.common import V, W, make_lm, make_lm_favouring, record_decoding, token_ids

MAX = 6 * W + 4  # One max_length and batch 2 for most tests: one compiled function serves them.
# What a model of the byte presets' 264 ids may generate as text: not padding (0), not BOS (1),
# not the ids 259 to 263 that ByteTokenizer's 259 ids leave over.
UNSAMPLABLE = [0, 1, 259, 260, 261, 262, 263]


@pytest.fixture(scope="module")
def lm():
    keras.utils.set_random_seed(11)
    return make_lm()


@pytest.mark.parametrize("config", [{}, {"gate": "lstm", "state_mlp": "dual"}, {"state_mlp": "single"},
                                    {"recurrent_layers": ()}, {"feedback": True}])
def test_decoding_one_token_at_a_time_equals_the_block_call(config):
    lm = make_lm(**config)
    lm.build()
    step = compile_function(lm, lm.backbone.decode_step)  # compiled once: fast on every backend
    ids = token_ids(batch=2, length=4 * W + 3)
    logits, _ = lm.call_with_state(ids)
    cache = lm.backbone.decode_cache(lm.initial_state(2))
    decoded = []
    for t in range(ids.shape[1]):
        hidden, cache = step(ids[:, t], np.int32(t % W), cache)
        decoded.append(np.asarray(lm.compute_logits(hidden[:, None]))[:, 0])
    # Across 4 block boundaries, where the state advances inside decode_step.
    np.testing.assert_allclose(np.stack(decoded, 1), np.asarray(logits), atol=1e-4)
    # The cache after whole blocks holds the carried state of call_with_state.
    _, state = lm.call_with_state(ids[:, :4 * W])
    cache = lm.backbone.decode_cache(lm.initial_state(2))
    for t in range(4 * W):
        _, cache = step(ids[:, t], np.int32(t % W), cache)
    for name, value in state.items():
        cached = cache[name.replace("_keys", "_prev_keys").replace("_values", "_prev_values")]
        np.testing.assert_allclose(np.asarray(cached), np.asarray(value), atol=1e-4, err_msg=name)


def _assert_greedy_is_the_argmax(lm, prompts, output):
    ids, mask = output["token_ids"], output["padding_mask"]
    logits, _ = lm.call_with_state(ids)
    predicted = np.asarray(logits).argmax(-1)
    for row, prompt in enumerate(prompts):
        n, end = len(prompt), int(mask[row].sum())
        np.testing.assert_array_equal(ids[row, :n], prompt)
        np.testing.assert_array_equal(ids[row, n:end], predicted[row, n - 1:end - 1])


@pytest.mark.parametrize("lengths", [(3, 1), (2 * W, 5 * W + 1), (3, 5 * W + 1)])
def test_greedy_generation_is_the_argmax_of_the_full_forward_pass(lm, lengths):
    # Prompts shorter than a block, many blocks long, and both in one batch; decoding
    # crosses several block boundaries where the state advances.
    prompts = [token_ids(1, n, seed=i)[0] for i, n in enumerate(lengths)]
    output = lm.generate(prompts, max_length=MAX)
    assert output["token_ids"].shape == (2, MAX)
    assert output["padding_mask"].all()  # no stop tokens: every row runs to max_length
    _assert_greedy_is_the_argmax(lm, prompts, output)


def test_stop_tokens_end_rows_independently(lm):
    # Prompts for which row 0 generates a token that row 1 never generates (an untrained
    # model's greedy output can repeat one token; the same compiled function serves all).
    for seed in range(20):
        prompts = [token_ids(1, 2, seed=seed)[0], token_ids(1, 5, seed=seed + 100)[0]]
        free = lm.generate(prompts, max_length=MAX)["token_ids"]
        generated0, generated1 = free[0, 2:], free[1, 5:]
        candidates = [int(t) for t in generated0[2:] if t not in generated1]
        if candidates:
            break
    else:
        pytest.fail("no prompts found whose rows generate different tokens")
    stop = candidates[0]
    where = 2 + int(np.argmax(generated0 == stop))
    output = lm.generate(prompts, max_length=MAX, stop_token_ids=[stop])
    ids, mask = output["token_ids"], output["padding_mask"]
    assert mask[0].sum() == where + 1 and ids[0, where] == stop  # kept, then masked
    assert not ids[0, where + 1:].any()
    np.testing.assert_array_equal(ids[0, :where + 1], free[0, :where + 1])
    np.testing.assert_array_equal(ids[1], free[1])  # row 1 ran on, unchanged
    assert mask[1].all()


def test_strip_prompt_and_strings_in_strings_out():
    lm = make_lm(vocabulary_size=259)
    tokenizer = ByteTokenizer()
    text = lm.generate(["def f(x):", "x"], max_length=3 * W, tokenizer=tokenizer)
    ids = lm.generate([[1] + list(np.asarray(tokenizer(t))) for t in ("def f(x):", "x")], max_length=3 * W)
    assert text == [tokenizer.detokenize(row) for row in ids["token_ids"]]
    assert text[0].startswith("def f(x):") and text[1].startswith("x")
    only_new = lm.generate(["def f(x):", "x"], max_length=3 * W, tokenizer=tokenizer, strip_prompt=True)
    assert text == ["def f(x):" + only_new[0], "x" + only_new[1]]
    # Strings with the model's own tokenizer (set after building, or given to the constructor);
    # one string in, one out.
    lm.generator.tokenizer = tokenizer
    assert lm.generate("x", max_length=3 * W, strip_prompt=True) == only_new[1]
    same_weights = BlockRecurrentTransformerCausalLM(lm.backbone, tokenizer=tokenizer)
    assert same_weights.generate("x", max_length=3 * W, strip_prompt=True) == only_new[1]
    with pytest.raises((AttributeError, ValueError)):  # Keras: no new sublayer once built
        lm.tokenizer = tokenizer  # never a silent sublayer that generate() would not read
    stripped = lm.generate([[1, 5, 6], [1]], max_length=3 * W, strip_prompt=True)
    full = lm.generate([[1, 5, 6], [1]], max_length=3 * W)
    assert stripped["padding_mask"].sum(1).tolist() == [3 * W - 3, 3 * W - 1]
    np.testing.assert_array_equal(stripped["token_ids"][0, :3 * W - 3], full["token_ids"][0, 3:])


def test_seeded_sampling_is_reproducible_and_stays_in_the_top_k(lm):
    prompts = [token_ids(1, 3, seed=0)[0]] * 2
    sample = lambda seed, sampler="random": lm.generate(prompts, MAX, sampler=sampler, seed=seed)
    first, again, other = sample(1)["token_ids"], sample(1)["token_ids"], sample(2)["token_ids"]
    np.testing.assert_array_equal(first, again)
    assert (first != other).any() and (first[0] != first[1]).any()  # rows draw independently
    output = sample(5, TopKSampler(k=2))["token_ids"]
    logits, _ = lm.call_with_state(output)
    top2 = np.argsort(np.asarray(logits), -1)[..., -2:]
    assert all(output[r, t + 1] in top2[r, t] for r in range(2) for t in range(2, MAX - 1))


def test_samplers_choose_from_the_right_tokens():
    logits = ops.convert_to_tensor(np.log([[0.5, 0.3, 0.15, 0.05]] * 2000).astype("float32"))
    uniform = ops.convert_to_tensor(np.random.default_rng(0).random(2000).astype("float32"))
    counts = lambda sampler: np.bincount(np.asarray(sampler(logits, uniform)), minlength=4) / 2000
    np.testing.assert_allclose(counts(RandomSampler()), [0.5, 0.3, 0.15, 0.05], atol=0.03)
    np.testing.assert_allclose(counts(TopKSampler(k=2)), [0.625, 0.375, 0, 0], atol=0.03)
    np.testing.assert_allclose(counts(TopPSampler(p=0.7)), [0.625, 0.375, 0, 0], atol=0.03)
    np.testing.assert_allclose(counts(TopPSampler(p=0.01)), [1, 0, 0, 0])
    np.testing.assert_allclose(counts(GreedySampler()), [1, 0, 0, 0])
    cold = counts(RandomSampler(temperature=0.25))  # sharper: the first token dominates
    assert cold[0] > 0.85


def test_keras_hub_style_samplers_are_accepted():
    class HubLeastLikely:  # keras_hub.samplers.Sampler's interface, without keras-hub
        def compute_probabilities(self, logits):
            return ops.softmax(logits, axis=-1)

        def get_next_token(self, probabilities):
            return ops.argmin(probabilities, axis=-1)  # never greedy's choice

        def get_config(self):
            return {}

    keras.utils.set_random_seed(11)
    lm = make_lm()
    prompts = [token_ids(1, 5, seed=3)[0], token_ids(1, 2, seed=4)[0]]
    output = lm.generate(prompts, 3 * W, sampler=HubLeastLikely(), stop_token_ids=())
    ids, mask = output["token_ids"], output["padding_mask"]
    logits = np.asarray(lm.call_with_state(ids)[0])
    for row, prompt in enumerate(prompts):
        n, end = len(prompt), int(mask[row].sum())
        assert end > n + 3
        np.testing.assert_array_equal(ids[row, n:end], logits[row, n - 1:end - 1].argmin(-1))
        assert not np.any(ids[row, n:end] == logits[row, n - 1:end - 1].argmax(-1))


def test_generate_compiles_once_and_compile_resets_it(monkeypatch):
    traces = []  # one entry each time the generate step is traced

    def counted_step(*args):
        traces.append(args[1])
        return generation.generate_step.__wrapped__(*args)

    counted_step.__wrapped__ = generation.generate_step
    monkeypatch.setattr(generation, "generate_step", counted_step)
    lm = make_lm()
    lm.compile(sampler="greedy")
    prompts = [token_ids(1, 3, seed=0)[0], token_ids(1, 7, seed=1)[0]]
    lm.generate(prompts, max_length=3 * W)
    assert len(traces) >= 1
    count = len(traces)
    lm.generate([token_ids(1, 6, seed=4)[0], token_ids(1, 2, seed=5)[0]], max_length=3 * W)
    assert len(traces) == count  # other prompts, same shapes: no retrace
    lm.compile(sampler=TopKSampler(k=3))
    assert isinstance(lm.sampler, TopKSampler)
    lm.generate(prompts, max_length=3 * W)
    assert len(traces) == count + 1 and isinstance(traces[-1], TopKSampler)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(inputs=[[1, 2, 3]], max_length=3), "Received: max_length=3"),
        (dict(inputs=[[1, 2], []], max_length=8), "at least one token id"),
        (dict(inputs=[[1, V]], max_length=8), f"vocabulary_size={V}). Received: [{V}]"),
        (dict(inputs=[[1, 2]], max_length=8, sampler="beam"), "Received: sampler='beam'"),
        (dict(inputs=["hello"], max_length=8), "String prompts need a tokenizer"),
        (dict(inputs=[[1, 2]], max_length=8, stop_token_ids=[-1]), "stop_token_ids=[-1]"),
        (dict(inputs=[[1.5, 2.0]], max_length=8), "must be integers"),
    ],
)
def test_generate_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        make_lm().generate(**kwargs)


def test_sampler_arguments_are_checked():
    for make, message in ((lambda: TopKSampler(k=0), "Received: k=0"),
                          (lambda: TopPSampler(p=1.5), "Received: p=1.5"),
                          (lambda: RandomSampler(temperature=0), "Received: temperature=0")):
        with pytest.raises(ValueError, match=message):
            make()
    assert get_sampler("top_p").p == 0.9 and isinstance(get_sampler(GreedySampler()), GreedySampler)
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(
        TopKSampler(k=7, temperature=0.5))).get_config() == {"k": 7, "temperature": 0.5}


def test_max_length_shorter_than_a_block(lm):
    output = lm.generate([[1, 2], [3]], max_length=W - 1)
    _assert_greedy_is_the_argmax(lm, [[1, 2], [3]], output)


@pytest.fixture(scope="module")
def favouring_lm():
    """264 ids, like the byte presets; its logits favour the ids a ByteTokenizer cannot turn
    into text (and padding and BOS) by about 20, whatever the text."""
    return make_lm_favouring(UNSAMPLABLE)


@pytest.fixture
def decoded(monkeypatch):
    """Every id sequence `ByteTokenizer.detokenize` is given, in order."""
    return record_decoding(monkeypatch)


def _masked_argmax(lm, ids):
    """The greedy next token after each position of `ids` `(2, MAX)` among the samplable ids
    (always of that shape: the first eager call of a shape is slow)."""
    logits = np.array(lm.call_with_state(ids)[0])
    logits[..., UNSAMPLABLE] = -np.inf
    return logits.argmax(-1)


@pytest.mark.parametrize("sampler", ["greedy", "random"])
def test_ids_the_tokenizer_cannot_decode_are_never_sampled(favouring_lm, decoded, sampler):
    # The byte presets have 264 ids, the ByteTokenizer 259: ids 259 to 263 used to be sampled
    # and crashed the decoding ("bytes must be in range(0, 256)").
    lm, prompts = favouring_lm, ["def f(x):", "x"]
    logits = np.asarray(lm.call_with_state(np.array([[1, 103, 104]], "int32"))[0])
    assert logits[0, -1].argmax() in UNSAMPLABLE[2:]  # unmasked, the model wants them
    texts = lm.generate(prompts, max_length=MAX, sampler=sampler, seed=0, tokenizer=ByteTokenizer())
    rows = decoded[-2:]  # what generate() decoded: each row up to its end
    for text, prompt, row in zip(texts, prompts, rows):
        n = 1 + len(prompt)
        assert row[0] == 1 and ByteTokenizer().detokenize(row[:n]) == prompt
        assert len(row) == MAX  # EOS is unlikely here: every row runs to max_length
        assert not np.isin(row[n:], UNSAMPLABLE).any(), row[n:]
        assert text == prompt + ByteTokenizer().detokenize(row[n:]) and len(text) > len(prompt)
    if sampler == "greedy":  # the most likely samplable id, at every step
        ids = np.stack(rows)
        predicted = _masked_argmax(lm, ids)
        for row, prompt in enumerate(prompts):
            n = 1 + len(prompt)
            np.testing.assert_array_equal(ids[row, n:], predicted[row, n - 1:-1])


@pytest.mark.slow  # compiles further samplers
def test_no_sampler_picks_an_id_the_tokenizer_cannot_decode(favouring_lm, decoded):
    class HubLeastLikely:  # keras_hub.samplers.Sampler's interface: picks what is least likely
        def compute_probabilities(self, logits):
            return ops.softmax(logits, axis=-1)

        def get_next_token(self, probabilities):
            return ops.argmin(probabilities, axis=-1)  # a masked id, of probability 0

        def get_config(self):
            return {}

    tokenizer = ByteTokenizer()
    for sampler in (TopKSampler(k=40), TopPSampler(p=0.99), RandomSampler(temperature=3.0),
                    HubLeastLikely()):
        favouring_lm.generate(["def f(x):", "x"], max_length=MAX, sampler=sampler, seed=1,
                              tokenizer=tokenizer)
        for row, n in zip(decoded[-2:], (10, 2)):
            assert len(row) == MAX and not np.isin(row[n:], UNSAMPLABLE).any(), (sampler, row[n:])
    # A sampler that still returns a masked id gets the most likely samplable one instead.
    ids = np.stack(decoded[-2:])
    np.testing.assert_array_equal(ids[1, 2:], _masked_argmax(favouring_lm, ids)[1, 1:-1])


def test_without_a_tokenizer_every_id_can_be_generated(favouring_lm):
    # Ids in, ids out: nothing is masked, the step is the unmasked one.
    output = favouring_lm.generate([[1, 103, 104], [1, 50]], max_length=MAX)["token_ids"]
    assert np.isin(output[0, 3:], UNSAMPLABLE).all() and np.isin(output[1, 2:], UNSAMPLABLE).all()


def test_an_empty_prompt_continues_from_bos_alone(favouring_lm, decoded):
    # An empty string is a BOS alone, as `keras-brt generate RUN --prompt ""` gives it
    # (tests/test_cli.py); the text follows from it, never padding or BOS (which decode
    # to nothing: a model that favours BOS used to give "").
    tokenizer = ByteTokenizer()
    text = favouring_lm.generate("", max_length=MAX, tokenizer=tokenizer)
    row = decoded[-1]
    assert row[0] == 1 and len(row) == MAX and not np.isin(row[1:], UNSAMPLABLE).any()
    np.testing.assert_array_equal(row[1:], _masked_argmax(favouring_lm, np.stack([row] * 2))[0, :-1])
    assert text == tokenizer.detokenize(row) and len(text) > 0
    assert favouring_lm.generate([""], max_length=MAX, tokenizer=tokenizer) == [text]


def test_a_preprocessors_tokenizer_masks_the_same_ids(favouring_lm, decoded):
    from keras_brt.data import BlockRecurrentTransformerCausalLMPreprocessor

    preprocessor = BlockRecurrentTransformerCausalLMPreprocessor(ByteTokenizer(), sequence_length=8)
    lm = BlockRecurrentTransformerCausalLM(favouring_lm.backbone, preprocessor=preprocessor)
    text = lm.generate("x", max_length=MAX)
    assert text == favouring_lm.generate("x", max_length=MAX, tokenizer=ByteTokenizer())
    assert not np.isin(decoded[-1][2:], UNSAMPLABLE).any()


def test_samplable_ids_and_decoding_of_ids_outside_the_vocabulary():
    tokenizer = ByteTokenizer()
    allowed = generation.samplable_ids(tokenizer, 264, generation.stop_ids("auto", tokenizer, 264))
    assert allowed.shape == (264,) and np.flatnonzero(~allowed).tolist() == UNSAMPLABLE
    assert allowed[2]  # EOS stays samplable: rows must be able to stop
    assert generation.samplable_ids(tokenizer, 264, [1])[1]  # a stop id is never masked
    assert generation.samplable_ids(object(), 10).all()  # nothing known of it: nothing masked
    # Decoding never fails: ids outside the vocabulary decode to nothing, as specials do.
    assert tokenizer.detokenize([1, 107, 259, 263, 108, 0, 2, 400]) == "hi"
    with pytest.raises(ValueError, match="vocabulary_size=0 for a model of vocabulary_size=4"):
        generation.samplable_ids(type("NoIds", (), {"vocabulary_size": 0})(), 4)
