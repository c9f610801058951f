"""Evaluation metrics: pure functions and small accumulators (``reset / update / compute``).

One module per task: ``classification``, ``depth``, ``detection`` (and ``segmentation``). Accumulators return
``(metrics, rows)``: a dict of dataset-level floats and a list of per-image dicts for a CSV.
"""
