"""Data modules whose transforms / tokenization come from the backbone's ``preprocess``."""

from tl_lightning.data._images import decode_image
from tl_lightning.data._transforms import image_eval_transform, image_train_transform
from tl_lightning.data.image_folder import IMAGE_EXTENSIONS, ImageFolderDataModule
from tl_lightning.data.text import TextClassificationDataModule, read_table

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataModule",
    "TextClassificationDataModule",
    "decode_image",
    "image_eval_transform",
    "image_train_transform",
    "read_table",
]
