"""The reward model and the critic as an MLflow pyfunc, logged from code (nothing is pickled).

Both are a transformer body with a scalar head; this model reads the scalar at the last token of
`<|user|>prompt<|assistant|>response<|eos|>`: the reward model's score (normalised by the mean/std saved in
its config.json, as PPO uses it) or the critic's value of the finished response. Its one artifact,
`checkpoint`, is the checkpoint directory; the core package `rlhf` travels with it as code.

Input: a DataFrame with `prompt` and `response` columns. Output: a DataFrame with one `score` per row.
A bad request (a text that cannot fit the context, a chat control string) gets HTTP 400 and a one-line reason.
"""

from __future__ import annotations

import pandas as pd
from mlflow.exceptions import MlflowException

import mlflow


class ScorerModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        # Imported here: the bundled `rlhf` code is on sys.path only once MLflow has loaded the model's conf.
        from rlhf.checkpoint import load_model, read_config
        from rlhf.judges import RewardModelJudge
        from rlhf.tokenizer import ChatTokenizer

        ckpt = context.artifacts["checkpoint"]
        config = read_config(ckpt)
        self.judge = RewardModelJudge(
            load_model(ckpt, arch="scalar"),
            ChatTokenizer.load(ckpt),
            float(config.get("reward_mean", 0.0)),
            float(config.get("reward_std", 1.0)),
        )

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        from rlhf import serving

        try:
            missing = {"prompt", "response"} - set(model_input.columns)
            if missing:
                raise serving.RequestError(
                    f"the scorer needs columns {sorted(missing)}; got {list(model_input.columns)}"
                )
            block, tok = self.judge.model.cfg.block_size, self.judge.tokenizer
            prompts = serving.texts(model_input["prompt"].tolist(), "prompt", tok, block)
            responses = serving.texts(model_input["response"].tolist(), "response", tok, block)
            longest = max((len(tok.encode_prompt(p)) for p in prompts), default=0)
            if longest >= block:  # a response cut to fit is scored (rlhf.judges), a prompt alone too long is not
                raise serving.RequestError(f"a prompt of {longest} tokens fills the model's context of {block}")
        except serving.RequestError as e:  # MLflow's scoring server answers this code with 400, message only
            raise MlflowException.invalid_parameter_value(str(e)) from None
        return pd.DataFrame({"score": self.judge(prompts, responses)})


mlflow.models.set_model(ScorerModel())
