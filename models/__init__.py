import os

from models.pretrain import PretrainModel
from models.qcd import QCDModel


def build_model(cfg):
    """The retrieval model described by `cfg` (from utils.config.load_config)."""
    return QCDModel(cfg)


def build_pretrain_model(cfg):
    """The pre-training model of `cfg`, with the entity prompts of data.root's entities/level{1,2,3}.txt
    when its stage trains EPL."""
    from datasets.annotations import DatasetPaths, read_entities
    from datasets.tokenizer import Tokenizer
    from losses.epl import NUM_LEVELS, entity_prompts
    from models.pretrain import STAGE_TERMS

    tokenizer = Tokenizer()
    prompts = None
    if "epl" in STAGE_TERMS[cfg["pretrain"]["stage"]]:
        paths = DatasetPaths.from_config(cfg["data"])
        prompts = []
        for level in range(1, NUM_LEVELS + 1):
            path = paths.entities_file(level)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"entity list not found: {path} (EPL reads entities/level1.txt, level2.txt "
                                        f"and level3.txt under data.root {paths.root})")
            entities = read_entities(path)
            if not entities:
                raise ValueError(f"{path}: no entity (expected one per line)")
            prompts.append(tokenizer(entity_prompts(entities, level), cfg["pretrain"]["prompt_max_len"]))
    return PretrainModel(cfg, prompts, special_ids=tokenizer.special_ids, mask_id=tokenizer.mask_id)


__all__ = ["PretrainModel", "QCDModel", "build_model", "build_pretrain_model"]
