"""XLA-compiled training under multi-replica tf.distribute strategies (TensorFlow backend).

Keras refuses or breaks `jit_compile=True` under MirroredStrategy and
MultiWorkerMirroredStrategy: the XLA cluster captures the mirrored variables'
handles and then reads a variable that lives on another device
(keras-team/keras#19005, "Trying to access resource ... located in device CPU:1
from device CPU:0"). This step keeps XLA where it matters and variables out of it:

1. outside XLA, in the replica context: read this replica's component of every
   model variable and this replica's rows of the carried lanes;
2. inside one `tf.function(jit_compile=True)`: the forward pass, the loss and the
   gradients, computed from those values alone (a Keras `StatelessScope` maps
   every variable to its value), returning the new lanes and the new values of
   non-trainable variables such as dropout seeds;
3. outside XLA: the optimizer applies the gradients (Keras all-reduces them
   across replicas), the lanes are all-gathered and stored, metrics update.

`BlockRecurrentTransformerCausalLM.compile(jit_compile=True)` selects this step by
itself when a multi-replica strategy is active; the compiled function is kept as
`lm.replica_step.function` (a test checks that XLA compiled it).
"""

import keras
import tensorflow as tf

from keras_brt.distribute import replicas
from keras_brt.models import lanes
from keras_brt.models.losses import TokenCrossEntropy


def _loss_object(model):
    loss = model.loss
    if isinstance(loss, keras.losses.Loss):
        return loss
    if loss in (None, "auto"):
        return TokenCrossEntropy()
    return keras.losses.get(loss)


class ReplicaStep:
    """The XLA-compiled forward and backward pass of one model and the variables it reads.

    A plain object: the model holds it as `lm.replica_step` without Keras tracking the
    variable list again. `function` is the `tf.function(jit_compile=True)`.
    """

    def __init__(self, model):
        self.variables = list(model.backbone.variables)  # trainable weights, dropout seeds
        trainable_ids = {id(v) for v in model.trainable_variables}
        self.trainable_index = [i for i, v in enumerate(self.variables) if id(v) in trainable_ids]
        self.function = _make_step_function(model, self.variables, self.trainable_index)


def _make_step_function(model, variables, trainable_index):
    loss_object = _loss_object(model)

    def step(values, token_ids, reset, padding_mask, state, y, sample_weight):
        watched = [values[i] for i in trainable_index]
        with tf.GradientTape() as tape:
            tape.watch(watched)
            with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
                logits, new_state = model.call_with_state(
                    token_ids, state, reset, padding_mask, training=True
                )
                loss = loss_object(y, logits, sample_weight)  # scaled by 1 / replicas
            new_values = [scope.get_current_value(v) for v in variables]
        gradients = tape.gradient(loss, watched)
        new_values = [v if n is None else n for v, n in zip(values, new_values)]
        return loss, logits, gradients, new_state, new_values

    return tf.function(step, jit_compile=True, reduce_retracing=True)


def train_step(model, data):
    """One training step: forward and backward XLA-compiled per replica."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    token_ids, start_of_sequence, padding_mask = lanes.unpack_inputs(x)
    context = replicas.replica_context()
    rows = lanes.rows_per_replica(model.lane_batch_size, context)
    token_ids, start_of_sequence, padding_mask, y, sample_weight = (
        lanes.with_rows(t, rows) for t in (token_ids, start_of_sequence, padding_mask, y, sample_weight)
    )
    if model.replica_step is None:
        model.replica_step = ReplicaStep(model)
    function = model.replica_step.function
    variables, trainable_index = model.replica_step.variables, model.replica_step.trainable_index

    lane_variables = model._lanes["train"]
    state, reset = lanes.read(lane_variables, context, rows, start_of_sequence)
    values = [tf.convert_to_tensor(v.value) for v in variables]
    loss, logits, gradients, new_state, new_values = function(
        values, token_ids, reset, padding_mask, state, y, sample_weight
    )

    model._loss_tracker.update_state(
        keras.src.losses.loss.unscale_loss_for_distribution(loss), sample_weight=tf.shape(token_ids)[0]
    )
    trainable = [variables[i] for i in trainable_index]
    model.optimizer.apply_gradients(zip(gradients, trainable))
    for i, variable in enumerate(variables):
        if i not in trainable_index and not variable.trainable:
            variable.assign(new_values[i])
    lanes.write(lane_variables, new_state, context, rows)
    return model.compute_metrics(x, y, logits, sample_weight=sample_weight)
