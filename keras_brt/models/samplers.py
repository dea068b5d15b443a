"""Samplers: how `generate()` picks the next token from the logits.

Each sampler maps float32 logits `(B, V)` and one uniform draw per row `(B,)`
to token ids `(B,)`. The draws come from a seeded NumPy generator outside the
compiled loop, so a seed reproduces the text exactly, on every backend, and
changing the seed never retraces. Random choices use the inverse CDF: one draw
per token, whatever the vocabulary size.
"""

import keras
from keras import ops


def _inverse_cdf(probabilities, uniform):
    """Index i with cdf[i-1] <= u * total < cdf[i] per row: `(B, V)`, `(B,)` → `(B,)`."""
    cdf = ops.cumsum(probabilities, axis=-1)  # (B, V)
    target = uniform[:, None] * cdf[:, -1:]  # (B, 1)
    index = ops.sum(ops.cast(cdf <= target, "int32"), axis=-1)  # (B,)
    return ops.minimum(index, ops.shape(probabilities)[-1] - 1)


@keras.saving.register_keras_serializable(package="keras_brt")
class Sampler:
    """Base sampler: softmax of `logits / temperature`, then `choose()`.

    Args:
        temperature: float > 0. Below 1 sharpens, above 1 flattens.

    Example:

    ```python
    lm.compile(sampler=keras_brt.models.TopKSampler(k=40, temperature=0.8))
    ```
    """

    def __init__(self, temperature=1.0):
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"`temperature` must be a number > 0. Received: temperature={temperature!r}")
        self.temperature = float(temperature)

    def __call__(self, logits, uniform):
        logits = ops.cast(logits, "float32") / self.temperature  # (B, V)
        return ops.cast(self.choose(ops.softmax(logits, axis=-1), uniform), "int32")

    def choose(self, probabilities, uniform):
        return _inverse_cdf(probabilities, uniform)

    def get_config(self):
        return {"temperature": self.temperature}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_brt")
class GreedySampler(Sampler):
    """The most likely token (the temperature does not matter)."""

    def choose(self, probabilities, uniform):
        return ops.argmax(probabilities, axis=-1)


@keras.saving.register_keras_serializable(package="keras_brt")
class RandomSampler(Sampler):
    """A token drawn from the whole distribution."""


@keras.saving.register_keras_serializable(package="keras_brt")
class TopKSampler(Sampler):
    """A token drawn from the `k` most likely ones.

    Args:
        k: int >= 1.
        temperature: float > 0.
    """

    def __init__(self, k=5, temperature=1.0):
        super().__init__(temperature)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"`k` must be an integer >= 1. Received: k={k!r}")
        self.k = k

    def choose(self, probabilities, uniform):
        k = min(self.k, probabilities.shape[-1])
        threshold = ops.top_k(probabilities, k)[0][:, -1:]  # (B, 1)
        return _inverse_cdf(ops.where(probabilities >= threshold, probabilities, 0.0), uniform)

    def get_config(self):
        return {**super().get_config(), "k": self.k}


@keras.saving.register_keras_serializable(package="keras_brt")
class TopPSampler(Sampler):
    """A token drawn from the smallest set of most likely tokens whose mass reaches `p`.

    Args:
        p: float in (0, 1].
        temperature: float > 0.
    """

    def __init__(self, p=0.9, temperature=1.0):
        super().__init__(temperature)
        if not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ValueError(f"`p` must be in (0, 1]. Received: p={p!r}")
        self.p = float(p)

    def choose(self, probabilities, uniform):
        order = ops.flip(ops.argsort(probabilities, axis=-1), axis=-1)  # (B, V), most likely first
        ordered = ops.take_along_axis(probabilities, order, axis=-1)  # (B, V)
        before = ops.cumsum(ordered, axis=-1) - ordered  # mass of the more likely tokens
        kept = ops.where(before < self.p, ordered, 0.0)  # the most likely token is always kept
        position = _inverse_cdf(kept, uniform)  # (B,)
        return ops.take_along_axis(order, position[:, None], axis=-1)[:, 0]

    def get_config(self):
        return {**super().get_config(), "p": self.p}


SAMPLERS = {"greedy": GreedySampler, "random": RandomSampler, "top_k": TopKSampler,
            "top_p": TopPSampler}


class _KerasHubSampler:
    """Adapts a `keras_hub.samplers.Sampler` (its probabilities and choice)."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __call__(self, logits, uniform):
        probabilities = self.sampler.compute_probabilities(ops.cast(logits, "float32"))
        return ops.cast(self.sampler.get_next_token(probabilities), "int32")

    def get_config(self):
        return {"keras_hub": type(self.sampler).__name__, **self.sampler.get_config()}


def get_sampler(sampler):
    """A sampler from a name (`"greedy"`, `"random"`, `"top_k"`, `"top_p"`), an
    instance, or a `keras_hub.samplers.Sampler` (keras-hub is not required)."""
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(f"`sampler` must be one of {sorted(SAMPLERS)} or a Sampler. "
                             f"Received: sampler={sampler!r}")
        return SAMPLERS[sampler]()
    if isinstance(sampler, Sampler):
        return sampler
    if hasattr(sampler, "get_next_token") and hasattr(sampler, "compute_probabilities"):
        return _KerasHubSampler(sampler)
    raise ValueError(f"`sampler` must be one of {sorted(SAMPLERS)} or a Sampler. Received: sampler={sampler!r}")
