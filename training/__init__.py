"""Offline half of nextword: trains word-level RNN/LSTM language models and exports ONNX bundles.

Run `python -m training --help`. Never imported by `service/`; the only thing the two share is
the bundle folder (`model.onnx` + `vocab.txt` + `manifest.json`).
"""
