"""T5 relative position bias, unidirectional, as used by every BRT layer."""

import math

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="keras_brt")
class RelativePositionBias(keras.layers.Layer):
    """Learned T5 relative position bias for causal attention.

    The distance `n = query_position - key_position` (clipped at 0) is put in
    one of `num_buckets` buckets: the first half are exact distances, the
    second half are log-spaced up to `max_distance`, beyond which all
    distances share the last bucket. Each head learns one scalar per bucket.
    The bucket arithmetic runs in int32/float32 whatever the dtype policy, and
    the bias is returned in float32 (it is added to float32 logits).

    Args:
        num_heads: int. Number of attention heads.
        num_buckets: int. Number of distance buckets (32 in the paper).
        max_distance: int. Distance at which the buckets stop growing (128).
        **kwargs: base layer arguments such as `name` and `dtype`.

    Call arguments:
        query_positions: int tensor `(Q,)` of absolute query positions.
        key_positions: int tensor `(S,)` of absolute key positions.

    Returns:
        float32 tensor `(num_heads, Q, S)`.

    Example:

    ```python
    bias = keras_brt.layers.RelativePositionBias(num_heads=4)
    b = bias(keras.ops.arange(8, 16), keras.ops.arange(0, 16))  # (4, 8, 16)
    ```
    """

    def __init__(self, num_heads, num_buckets=32, max_distance=128, **kwargs):
        super().__init__(**kwargs)
        for arg, value in (
            ("num_heads", num_heads),
            ("num_buckets", num_buckets),
            ("max_distance", max_distance),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{arg}` must be a positive integer. Received: {arg}={value!r}"
                )
        if num_buckets < 2 or max_distance <= num_buckets // 2:
            raise ValueError(
                "`max_distance` must exceed `num_buckets // 2` and `num_buckets` "
                f"must be at least 2. Received: num_buckets={num_buckets}, "
                f"max_distance={max_distance}"
            )
        self.num_heads = num_heads
        self.num_buckets = num_buckets
        self.max_distance = max_distance

    def build(self, query_positions_shape=None, key_positions_shape=None):
        self.embeddings = self.add_weight(
            shape=(self.num_heads, self.num_buckets),
            initializer=keras.initializers.RandomNormal(stddev=0.1),
            name="embeddings",
        )

    def bucket(self, distance):
        """Maps non-negative int distances to bucket ids (int32, same shape)."""
        distance = ops.maximum(ops.cast(distance, "int32"), 0)
        max_exact = self.num_buckets // 2
        log_ratio = ops.log(
            ops.maximum(ops.cast(distance, "float32"), 1.0) / max_exact
        ) / math.log(self.max_distance / max_exact)
        large = max_exact + ops.cast(log_ratio * (self.num_buckets - max_exact), "int32")
        large = ops.minimum(large, self.num_buckets - 1)
        return ops.where(distance < max_exact, distance, large)

    def call(self, query_positions, key_positions):
        distance = query_positions[:, None] - key_positions[None, :]  # (Q, S)
        buckets = self.bucket(distance)  # (Q, S)
        table = ops.cast(self.embeddings, "float32")  # (H, num_buckets)
        return ops.take(table, buckets, axis=1)  # (H, Q, S)

    def contiguous(self, query_start, num_queries, key_start, num_keys):
        """`self(arange(query_start, +num_queries), arange(key_start, +num_keys))`, fast.

        The bias of contiguous positions is a Toeplitz matrix: it reads the
        table at only `Q + S - 1` distinct distances. This looks those up once
        and lays them out by tiling, so the gradient is a sum over the tiles
        instead of a scatter-add of all `H·Q·S` entries into the 32-bucket
        table, whose collisions made it the slowest kernel of a training step
        on a GPU. Sizes and starts are Python ints.

        Returns:
            float32 `(num_heads, Q, S)`, equal to the call on the two ranges.
        """
        q, k = num_queries, num_keys
        if q < 2:
            return self(ops.arange(query_start, query_start + q), ops.arange(key_start, key_start + k))
        length = q + k - 1
        # Row r of the result is a window of this vector shifted one place per row:
        # laid out in rows of length-1 entries, entry n lands at row n // (length-1).
        rotated = (np.arange(length) + q - 1) % length
        distance = query_start - key_start + q - 1 - rotated  # (Q+S-1,)
        table = ops.cast(self.embeddings, "float32")  # (H, num_buckets)
        vector = ops.take(table, self.bucket(ops.convert_to_tensor(distance)), axis=1)  # (H, Q+S-1)
        tiled = ops.tile(vector, (1, q))[:, : q * (length - 1)]  # (H, Q*(Q+S-2))
        return ops.reshape(tiled, (self.num_heads, q, length - 1))[:, :, :k]  # (H, Q, S)

    def compute_output_shape(self, query_positions_shape, key_positions_shape):
        return (self.num_heads, query_positions_shape[0], key_positions_shape[0])

    def compute_output_spec(self, query_positions, key_positions):
        return keras.KerasTensor(
            self.compute_output_shape(query_positions.shape, key_positions.shape),
            dtype="float32",
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "num_buckets": self.num_buckets,
                "max_distance": self.max_distance,
            }
        )
        return config
