"""XLA compilation of functions that read a model's variables, on either backend."""

import keras


def compile_function(lm, fn):
    """XLA-compiles `fn(*args)`, which may read `lm`'s variables, on the active backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, reduce_retracing=True)
    if backend == "jax":
        import jax

        compiled = {}

        def run(*args):
            if not lm.built:
                lm.build()  # Variables must exist before tracing, or they would be baked in.
            variables = lm.variables
            key = tuple(id(v) for v in variables)
            if key not in compiled:

                def stateless(values, *inner):
                    with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                        return fn(*inner)

                compiled[key] = jax.jit(stateless)
            return compiled[key]([v.value for v in variables], *args)

        return run
    return fn
