"""Online half of nextword: a Flask app under gunicorn serving ONNX bundles, session state in Redis.

Start it with `python -m service` (or `make serve`). Never imports torch or `training/`.
"""
