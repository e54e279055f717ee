"""The RecBole dataset of the plugin's multimodal models: interactions plus item content."""

from __future__ import annotations

from pathlib import Path

from recbole_perpeft.data.content import ItemContent, load_item_content
from recbole_perpeft.data.sequential import PluginSequentialDataset


class MultimodalSequentialDataset(PluginSequentialDataset):
    """A sequential dataset whose ``item_content`` gives every internal item id its content.

    ``item_content.titles[i]`` / ``image_paths[i]`` belong to internal item id ``i`` (RecBole's
    remapping, padding id 0 included). Config keys: ``TITLE_FIELD``, ``IMAGE_FIELD`` (``~`` for
    text-only datasets) and ``image_dir`` (folder of the images, relative to the dataset).
    Splits made by ``build()`` share the same ``item_content``.
    """

    def __init__(self, config):
        super().__init__(config)
        self.item_content: ItemContent = load_item_content(
            Path(config["data_path"]),
            config["dataset"],
            list(self.field2id_token[self.iid_field]),
            title_field=config["TITLE_FIELD"] or "",
            image_field=config["IMAGE_FIELD"] or "",
            image_dir=config["image_dir"] or "images",
            logger=self.logger,
            item_id_field=self.iid_field,
        )
        titles = int(self.item_content.has_title[1:].sum())
        images = int(self.item_content.has_image[1:].sum())
        self.logger.info(
            f"item content: {self.item_num - 1} items, {titles} with a title, {images} with an image"
        )
