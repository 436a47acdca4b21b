"""The actor as an MLflow pyfunc, logged from code (MLflow's "models from code": this file is the model,
nothing is pickled). Its one artifact, `checkpoint`, is a checkpoint directory (model.safetensors,
config.json, tokenizer.json); the core package `rlhf` travels with it as code, so `mlflow models serve`
needs no checkout.

Input: a DataFrame with a `prompt` column. Params (optional, per request): max_new_tokens, temperature, seed.
Output: a DataFrame with one `response` per prompt. Serving request:
    {"dataframe_records": [{"prompt": "..."}], "params": {"max_new_tokens": 32, "temperature": 0.7}}
"""

from __future__ import annotations

from typing import Any

import pandas as pd

import mlflow

DEFAULTS: dict[str, Any] = {"max_new_tokens": 48, "temperature": 0.7, "seed": 0}


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
        from rlhf.generate import SamplingConfig, generate_text

        if "prompt" not in model_input.columns:
            raise ValueError(f"the actor needs a 'prompt' column; got columns {list(model_input.columns)}")
        p = {**DEFAULTS, **{k: v for k, v in (params or {}).items() if v is not None}}
        prompts = [str(x) for x in model_input["prompt"]]
        # Prompt + response must fit the context: shorten the response rather than fail the request.
        longest = max((len(self.tokenizer.encode_prompt(x)) for x in prompts), default=0)
        room = self.model.cfg.block_size - longest
        if room < 1:
            raise ValueError(
                f"a prompt of {longest} tokens leaves no room in the model's context of "
                f"{self.model.cfg.block_size} tokens; send a shorter prompt"
            )
        sampling = SamplingConfig(
            max_new_tokens=min(int(p["max_new_tokens"]), room), temperature=float(p["temperature"])
        )
        responses = generate_text(self.model, self.tokenizer, prompts, sampling, seed=int(p["seed"]))
        return pd.DataFrame({"response": responses})


mlflow.models.set_model(ActorModel())
