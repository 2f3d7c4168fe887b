"""Diagnostics for "does transfer help here?": input checks, forgetting, layer maps, per-class results.

All four are Lightning callbacks that work on any LightningModule (the layer groups are found as
the fine-tuning callbacks find them) and under DDP:

* :class:`InputCheck`: the first training batches against the model's preprocessing (0-255
  pixels, double normalization, BGR, grayscale, size; foreign tokenizer, unknown tokens,
  truncation), one warning naming the likely cause;
* :class:`ForgettingMonitor`: per layer group, CKA / cosine with the pretrained representation
  and relative weight drift every epoch, and a warning on the symptoms of catastrophic forgetting;
* :class:`LayerMap`: a picture of the layer groups (frozen / trainable / head, LR, drift) at every
  unfreeze event and at the end, plus the LR and metric curves of the run;
* :class:`PerClassReport`: per-class and per-subgroup precision / recall / F1 and the confusion
  matrix after testing.

Example:
    >>> from tl_lightning.diagnostics import ForgettingMonitor, InputCheck, LayerMap, PerClassReport
    >>> callbacks = [InputCheck(), ForgettingMonitor(), LayerMap(), PerClassReport()]
"""

from tl_lightning.diagnostics.cka import gram_cka, linear_cka
from tl_lightning.diagnostics.curves import RunCurves, plot_lr_curves, plot_metric_curves
from tl_lightning.diagnostics.forgetting import ForgettingMonitor
from tl_lightning.diagnostics.input_check import CHECKS, InputCheck, find_expected_preprocess
from tl_lightning.diagnostics.layer_map import STATE_COLORS, LayerMap, draw_layer_map
from tl_lightning.diagnostics.per_class import PerClassReport, plot_confusion_matrix

__all__ = [
    "CHECKS",
    "STATE_COLORS",
    "ForgettingMonitor",
    "InputCheck",
    "LayerMap",
    "PerClassReport",
    "RunCurves",
    "draw_layer_map",
    "find_expected_preprocess",
    "gram_cka",
    "linear_cka",
    "plot_confusion_matrix",
    "plot_lr_curves",
    "plot_metric_curves",
]
