"""People in the loop: a labeling web app (app.py) over a SQLite store (db.py) whose rankings are exported into
data/incoming/ for the retraining flow. Run it with `bin/label` (see `bin/label --help`).

The core package `rlhf` knows nothing of this: the web stack (Starlette/FastAPI, uvicorn, Jinja2) is imported
only here.
"""
