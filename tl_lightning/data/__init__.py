"""Data modules whose transforms / tokenization come from the backbone's ``preprocess``."""

from tl_lightning.data._transforms import image_eval_transform, image_train_transform
from tl_lightning.data.image_folder import IMAGE_EXTENSIONS, ImageFolderDataModule

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataModule", "image_eval_transform", "image_train_transform"]
