"""The tensor keys of the batches the loaders build and the models read (docs/DATA_FORMAT.md)."""

TRAIN_KEYS = ("query_ids", "query_mask", "frames", "text_ids", "text_mask")
ITEM_KEYS = ("frames", "text_ids", "text_mask")
# train.mode=ft: a goods item (the ITEM_KEYS) and a micro-video of the same query under these names
PAIR_VIDEO_KEYS = tuple(f"video_{k}" for k in ITEM_KEYS)
PAIR_KEYS = ITEM_KEYS + PAIR_VIDEO_KEYS + ("pair_valid",)
