"""Prefect flows: pipeline.py (the stages, registration, promotion), retrain.py (new feedback data).

Importing this package gives Prefect, DVC and MLflow quiet, project-local defaults unless the environment
already chose: Prefect's home (its database, results) in the project's .prefect/, warnings only, no
analytics. They must be set before Prefect is imported, which reads its settings once.
"""

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent

for _key, _value in {
    "PREFECT_HOME": str(_ROOT / ".prefect"),
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}.items():
    os.environ.setdefault(_key, _value)
