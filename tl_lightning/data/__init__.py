"""Data modules whose transforms / tokenization come from the backbone's ``preprocess``."""

from tl_lightning.data._transforms import image_eval_transform, image_train_transform

__all__ = ["image_eval_transform", "image_train_transform"]
