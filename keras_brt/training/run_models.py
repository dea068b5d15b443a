"""A run's model put to use: `generate_from_run` (text) and `export_run` (a SavedModel),
and `load_model_and_tokenizer`, which `keras-brt evaluate` shares.

Both use the run's final model, or its last checkpoint while it is still
training, with the run's tokenizer; or the model and tokenizer of a preset folder
(`save_to_preset`, e.g. a run's `preset/`). Errors name the `keras-brt generate` and
`keras-brt export` flags of the arguments.
"""

import os

from keras_brt.training import runs


def load_model_and_tokenizer(run_dir, need_tokenizer=True):
    """The causal LM and tokenizer of a run directory (its final model, or its last
    checkpoint while it trains) or of a preset folder."""
    from keras_brt.models import preset_io

    if preset_io.is_preset_folder(run_dir):
        from keras_brt.models import BlockRecurrentTransformerCausalLM

        lm = BlockRecurrentTransformerCausalLM.from_preset(run_dir)
        if need_tokenizer and lm.tokenizer is None:
            raise ValueError(
                f"The preset folder has no {preset_io.TOKENIZER_FILE}, so text cannot be "
                f"tokenized. Received: {run_dir!r}"
            )
        return lm, lm.tokenizer
    parts = [name for name in (preset_io.WEIGHTS_FILE, preset_io.METADATA_FILE,
                               preset_io.TOKENIZER_FILE)
             if os.path.isfile(os.path.join(run_dir, name))]
    if parts and not os.path.isfile(os.path.join(run_dir, "run.json")):
        raise ValueError(
            f"The folder holds {', '.join(parts)} but no {preset_io.CONFIG_FILE}: a preset folder "
            f"missing its config (save it again with save_to_preset, or copy it again), and not a "
            f"run directory (no run.json). Received: {run_dir!r}"
        )
    runs.read_run(run_dir)
    lm = runs.load_checkpoint(runs.run_model_path(run_dir))
    return lm, runs.load_tokenizer(run_dir) if need_tokenizer else None


def _read_prompt_file(path, encoding):
    if not os.path.isfile(path):
        raise ValueError(f"`--prompt-file` names no file. Received: --prompt-file={path!r}")
    try:
        with open(path, encoding=encoding) as f:
            return f.read()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"`--prompt-file` is not {encoding} text ({error.reason} at byte {error.start}); give its "
            f"encoding with --encoding, e.g. --encoding latin-1. Received: --prompt-file={path!r}"
        ) from None


def generate_from_run(run_dir, prompt=None, *, prompt_file=None, encoding="utf-8", max_length=256,
                      max_new_tokens=None, sampler="top_p", temperature=1.0, top_k=40, top_p=0.9,
                      seed=None, strip_prompt=False):
    """Continues a text with a run's model.

    Every argument is checked before the model is loaded.

    Args:
        run_dir: the run directory, or a preset folder.
        prompt: the text to continue.
        prompt_file: a file to read the prompt from instead (any length).
        encoding: the text encoding of `prompt_file`.
        max_length: tokens of prompt (with its BOS) plus output.
        max_new_tokens: tokens to add to the prompt, instead of `max_length`.
        sampler: `"greedy"`, `"random"`, `"top_k"` or `"top_p"` (or any name
            `keras_brt.models.get_sampler` knows).
        temperature: the sampler's temperature.
        top_k: `k` of the `"top_k"` sampler.
        top_p: `p` of the `"top_p"` sampler.
        seed: the sampling seed (`None`: unseeded).
        strip_prompt: return only the continuation.

    Returns:
        The text: the prompt and its continuation, or with `strip_prompt`
        the continuation alone.
    """
    from keras_brt.models import get_sampler
    from keras_brt.models.samplers import SAMPLERS

    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"`--max-new-tokens` must be at least 1. Received: --max-new-tokens={max_new_tokens}")
    if prompt_file:
        prompt = _read_prompt_file(prompt_file, encoding)
    if prompt is None:
        raise ValueError("Give --prompt TEXT or --prompt-file PATH. Received: neither")
    lm, tokenizer = load_model_and_tokenizer(run_dir)
    options = {"temperature": temperature}
    if sampler == "top_k":
        options["k"] = top_k
    elif sampler == "top_p":
        options["p"] = top_p
    chosen = SAMPLERS[sampler](**options) if sampler in SAMPLERS else get_sampler(sampler)
    if max_new_tokens is not None:
        max_length = 1 + len(tokenizer(prompt)) + max_new_tokens
    return lm.generate(prompt, max_length=max_length, sampler=chosen, tokenizer=tokenizer,
                       stop_token_ids="auto", strip_prompt=strip_prompt, seed=seed)


def export_run(run_dir, out_dir, *, version=1, scores="logits", text_signature=True, overwrite=False):
    """Writes a run's model as a SavedModel for TF Serving, in `out_dir/<version>`.

    Prints where it went, its signatures, its state tensors and the command
    that serves it. See `keras_brt.export.export_saved_model`.

    Args:
        run_dir: the run directory, or a preset folder.
        out_dir: the model base path.
        version: the model version, the SavedModel's folder in `out_dir`.
        scores: `"logits"` or `"log_probs"`, what `serving_default` and `step` return.
        text_signature: include `score_text` and `tokenize` (strings in,
            through the run's tokenizer).
        overwrite: replace an existing `out_dir/<version>`.

    Returns:
        The SavedModel's path.
    """
    from keras_brt.export import export_saved_model

    lm, tokenizer = load_model_and_tokenizer(run_dir, need_tokenizer=text_signature)
    target = export_saved_model(lm, out_dir, version=version, scores=scores,
                                tokenizer=tokenizer, overwrite=overwrite)
    names = sorted(lm.backbone.state_shapes(None))
    print(f"SavedModel written to {target}")
    print("signatures: serving_default, initial_state, step"
          + ("" if tokenizer is None else ", score_text, tokenize"))
    print(f"state tensors ({len(names)}): {', '.join(names)}")
    base = os.path.abspath(out_dir)
    print(f"serve it: tensorflow_model_server --rest_api_port=8501 --model_name=brt "
          f"--model_base_path={base}")
    return target
