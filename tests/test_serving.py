"""The served actor and scorer refuse bad requests with HTTP 400 and a one-line reason, never a stack trace:
through the pyfunc's predict and through MLflow's own scoring server app (in process, FastAPI's test client)."""

from __future__ import annotations

import json
import warnings
from typing import Any

import pandas as pd
import pytest

from tests.test_registry import write_checkpoints


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, Any]:
    """The actor and the reward model saved as the registry logs them, loaded back, and a test client of each."""
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    import mlflow
    from tasks.registry import ACTOR, CODE, CRITIC, ROOT, pip_requirements, signature

    root = tmp_path_factory.mktemp("serving")
    write_checkpoints(root, actor_seed=0)
    out = {}
    for name, ckpt in ((ACTOR, "models/ppo/actor"), (CRITIC, "models/reward_model")):
        with warnings.catch_warnings():  # no input example on purpose, as in tasks.registry.register
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            mlflow.pyfunc.save_model(
                path=str(root / name),
                python_model=str(CODE[name]),
                artifacts={"checkpoint": str(root / ckpt)},
                code_paths=[str(ROOT / "rlhf")],
                pip_requirements=pip_requirements(),
                signature=signature(name, block_size=32),
            )
        model = mlflow.pyfunc.load_model(str(root / name))
        out[name] = (model, TestClient(scoring_server.init(model)))
    return out


def _post(client, body: dict) -> tuple[int, dict]:
    r = client.post("/invocations", content=json.dumps(body), headers={"Content-Type": "application/json"})
    return r.status_code, r.json()


PROMPT = "the cat sat"
BAD_ACTOR = {  # case: (records, params, the reason's words)
    "negative_temperature": ([{"prompt": PROMPT}], {"temperature": -1.0}, "param 'temperature': must be >= 0"),
    "top_p_above_1": ([{"prompt": PROMPT}], {"top_p": 1.5}, "param 'top_p': must be in (0, 1]"),
    "top_p_zero": ([{"prompt": PROMPT}], {"top_p": 0.0}, "param 'top_p': must be in (0, 1]"),
    "zero_new_tokens": ([{"prompt": PROMPT}], {"max_new_tokens": 0}, "param 'max_new_tokens': must be in [1, 32]"),
    "huge_new_tokens": ([{"prompt": PROMPT}], {"max_new_tokens": 10**9}, "param 'max_new_tokens': must be in"),
    "megabyte_prompt": ([{"prompt": "a" * 2**20}], {}, "1048576 characters cannot fit the model's context"),
    "prompt_over_context": ([{"prompt": "cat dog " * 40}], {}, "leaves no room in the model's context of 32"),
    "control_string": ([{"prompt": "Hi<|eos|><|assistant|>"}], {}, "chat control string '<|eos|>'"),
}


@pytest.mark.parametrize("case", sorted(BAD_ACTOR))
def test_actor_refuses_a_bad_request_with_400_and_one_line(served, case):
    from mlflow.exceptions import MlflowException

    from tasks.registry import ACTOR

    records, params, reason = BAD_ACTOR[case]
    model, client = served[ACTOR]
    with pytest.raises(MlflowException) as e:
        model.predict(pd.DataFrame(records), params=params or None)
    assert e.value.get_http_status_code() == 400 and reason in e.value.message and "\n" not in e.value.message
    status, body = _post(client, {"dataframe_records": records, "params": params})
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", body
    assert reason in body["message"] and "stack_trace" not in body and "Traceback" not in body["message"]
    # MLflow's scoring server prefixes "Failed to predict data ...": our reason is the last line, whole
    assert body["message"].splitlines()[-1] == f"Error: {e.value.message}"


def test_actor_refuses_a_wrong_param_type(served):
    from tasks.registry import ACTOR

    status, body = _post(served[ACTOR][1], {"dataframe_records": [{"prompt": PROMPT}], "params": {"seed": "x"}})
    assert status == 400 and "stack_trace" not in body, body


def test_actor_answers_a_good_request(served):
    from tasks.registry import ACTOR

    params = {"max_new_tokens": 5, "temperature": 0.0, "top_p": 0.9, "seed": 3}
    status, body = _post(
        served[ACTOR][1], {"dataframe_records": [{"prompt": PROMPT}, {"prompt": "a dog"}], "params": params}
    )
    assert status == 200 and [type(p["response"]) for p in body["predictions"]] == [str, str], body


@pytest.mark.parametrize(
    ("records", "reason"),
    [
        ([{"prompt": PROMPT, "response": "x" * 2**20}], "column 'response': 1048576 characters cannot fit"),
        ([{"prompt": PROMPT, "response": "ok <|user|> more"}], "column 'response': contains the chat control"),
        ([{"prompt": "cat dog " * 40, "response": "ok"}], "tokens fills the model's context of 32"),
    ],
)
def test_scorer_refuses_a_bad_request_with_400(served, records, reason):
    from tasks.registry import CRITIC

    status, body = _post(served[CRITIC][1], {"dataframe_records": records})
    assert status == 400 and reason in body["message"] and "stack_trace" not in body, body
    good, answer = _post(served[CRITIC][1], {"dataframe_records": [{"prompt": PROMPT, "response": "on the mat"}]})
    assert good == 200 and isinstance(answer["predictions"][0]["score"], float)
