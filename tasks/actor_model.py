"""The actor as an MLflow pyfunc, logged from code (MLflow's "models from code": this file is the model,
nothing is pickled). Its one artifact, `checkpoint`, is a checkpoint directory (model.safetensors,
config.json, tokenizer.json); the core package `rlhf` travels with it as code, so `mlflow models serve`
needs no checkout.

Input: a DataFrame with a `prompt` column. Params (optional, per request): max_new_tokens, temperature, top_p,
seed. Output: a DataFrame with one `response` per prompt. Serving request:
    {"dataframe_records": [{"prompt": "..."}], "params": {"max_new_tokens": 32, "temperature": 0.7}}
A bad request (a param out of range, a prompt too long for the context or holding a chat control string) is
refused before any generation with HTTP 400 and a one-line reason (rlhf.serving).
"""

from __future__ import annotations

import pandas as pd
from mlflow.exceptions import MlflowException

import mlflow


class ActorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        # Imported here: the bundled `rlhf` code is on sys.path only once MLflow has loaded the model's conf.
        from rlhf.checkpoint import load_model
        from rlhf.tokenizer import ChatTokenizer

        ckpt = context.artifacts["checkpoint"]
        self.model = load_model(ckpt, arch="gpt").eval()
        self.tokenizer = ChatTokenizer.load(ckpt)

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        from rlhf.serving import RequestError

        try:
            return self._generate(model_input, params or {})
        except RequestError as e:  # MLflow's scoring server answers this code with 400, message only
            raise MlflowException.invalid_parameter_value(str(e)) from None

    def _generate(self, model_input: pd.DataFrame, params: dict) -> pd.DataFrame:
        from dataclasses import replace

        from rlhf import serving
        from rlhf.generate import generate_text

        if "prompt" not in model_input.columns:
            raise serving.RequestError(f"the actor needs a 'prompt' column; got columns {list(model_input.columns)}")
        block = self.model.cfg.block_size
        defaults = {**serving.DEFAULTS, "max_new_tokens": min(serving.DEFAULTS["max_new_tokens"], block)}
        sampling, seed = serving.sampling({**defaults, **{k: v for k, v in params.items() if v is not None}}, block)
        prompts = serving.texts(model_input["prompt"].tolist(), "prompt", self.tokenizer, block)
        # Prompt + response must fit the context: shorten the response rather than fail the request.
        longest = max((len(self.tokenizer.encode_prompt(x)) for x in prompts), default=0)
        room = block - longest
        if room < 1:
            raise serving.RequestError(
                f"a prompt of {longest} tokens leaves no room in the model's context of {block} tokens; "
                "send a shorter prompt"
            )
        sampling = replace(sampling, max_new_tokens=min(sampling.max_new_tokens, room))
        responses = generate_text(self.model, self.tokenizer, prompts, sampling, seed=seed)
        return pd.DataFrame({"response": responses})


mlflow.models.set_model(ActorModel())
