"""The two model builders, the only readers of the config here: they read its sections and pass explicit
arguments and the small dataclasses of the modules below (BackboneSpec, PoolingSpec, FusionSpec, ReconSpec,
ContrastiveSpec) down. model.family=cope builds models.cope's own model (`build_cope_model`)."""
import os

from datasets.annotations import DatasetPaths, read_entities
from datasets.families import build_tokenizer
from datasets.tokenizer import Tokenizer
from losses.epl import NUM_LEVELS, entity_prompts
from losses.query_contrastive import ContrastiveSpec
from models.backbone import CNClipBackbone
from models.cope import CopeModel, cope_model
from models.families import BackboneSpec, build_backbone
from models.fusion import FusionSpec
from models.pretrain import STAGE_TERMS, PretrainModel
from models.qcd import QCDModel
from models.reconstruction import ReconSpec
from models.video_pooling import PoolingSpec
from models.weights import check_cope_text_weights, check_weights


def backbone_spec(cfg):
    """The BackboneSpec of model.family and model.backbone, with model.embed_dim and the data sizes."""
    m, b, d = cfg["model"], cfg["model"]["backbone"], cfg["data"]
    return BackboneSpec(family=m["family"], embed_dim=m["embed_dim"], image_size=d["image_size"],
                        query_max_len=d["query_max_len"], text_max_len=d["text_max_len"],
                        vision_model=b["vision_model"], text_model=b["text_model"], pretrained=b["pretrained"],
                        grad_checkpointing=bool(b["grad_checkpointing"]), freeze=tuple(b["freeze"]),
                        overrides=b["overrides"])


def _fusion_spec(cfg):
    f = cfg["model"]["fusion"]
    return FusionSpec(kind=f["type"], num_layers=f["num_layers"], text_input=f["text_input"],
                      proj_bias=f["proj_bias"])


def _contrastive_spec(cfg):
    lcfg = cfg["loss"]
    return ContrastiveSpec(temperature=lcfg["temperature"], learn_temperature=lcfg["learn_temperature"],
                           max_logit_scale=lcfg["max_logit_scale"], negatives=lcfg["negatives"],
                           symmetric=lcfg["symmetric"])


def build_cope_model(cfg):
    """The COPE model of model.cope, loss.cope and the shared contrastive settings (models.cope)."""
    m, d, c, lc = cfg["model"], cfg["data"], cfg["model"]["cope"], cfg["loss"]["cope"]
    b = m["backbone"]
    check_weights(m["family"], b["pretrained"])
    check_cope_text_weights(c["text_pretrained"])
    classes = dict(num_classes=lc["num_classes"], negatives=lc["cls_negatives"], temperature=lc["cls_temperature"],
                   momentum=lc["cls_momentum"])
    return cope_model(xclip_folder=b["pretrained"], xclip_overrides=c["xclip_overrides"], text_model=c["text_model"],
                      text_overrides=c["text_overrides"], text_pretrained=c["text_pretrained"],
                      image_size=d["image_size"], num_frames=d["num_frames"],
                      text_lengths={"query_max_len": d["query_max_len"], "text_max_len": d["text_max_len"]},
                      freeze=tuple(b["freeze"]), embed_dim=m["embed_dim"], mode=cfg["train"]["mode"],
                      contrastive=_contrastive_spec(cfg), weights=lc["weights"], classes=classes,
                      fusion_layers=c["fusion_layers"], fusion_heads=c["fusion_heads"],
                      grad_checkpointing=bool(b["grad_checkpointing"]))


# model.family values that build a model of their own instead of the QCD model on a backbone of models.families
OWN_MODELS = {"cope": build_cope_model}


def build_model(cfg):
    """The retrieval model described by `cfg` (from utils.config.load_config)."""
    m, d = cfg["model"], cfg["data"]
    if m["family"] in OWN_MODELS:
        return OWN_MODELS[m["family"]](cfg)
    backbone = build_backbone(backbone_spec(cfg))
    v = m["video"]
    pooling = PoolingSpec(kind=v["pooling"], ftt_layers=v["ftt_layers"], ftt_heads=v["ftt_heads"],
                          mit_layers=v["mit_layers"])
    recon = token_ids = None
    if cfg["loss"]["recon"]:
        r = m["recon"]
        recon = ReconSpec(text_layers=r["text_layers"], text_heads=r["text_heads"], vision_layers=r["vision_layers"],
                          vision_heads=r["vision_heads"], vision_mask_ratio=r["vision_mask_ratio"])
        tokenizer = build_tokenizer(m["family"], m["backbone"]["pretrained"])
        token_ids = (tokenizer.start_id, tokenizer.end_id, tokenizer.pad_id)
    return QCDModel(backbone, pooling=pooling, fusion=_fusion_spec(cfg), contrastive=_contrastive_spec(cfg),
                    weights=cfg["loss"]["weights"], mode=cfg["train"]["mode"], num_frames=d["num_frames"],
                    query_max_len=d["query_max_len"], text_attention_mask=m["backbone"]["text_attention_mask"],
                    grad_checkpointing=bool(m["backbone"]["grad_checkpointing"]), recon=recon, token_ids=token_ids)


def build_pretrain_model(cfg):
    """The pre-training model of `cfg`, with the entity prompts of data.root's entities/level{1,2,3}.txt
    when its stage trains EPL."""
    p = cfg["pretrain"]
    stage = str(p["stage"])
    tokenizer = Tokenizer()
    prompts = None
    if "epl" in STAGE_TERMS[stage]:
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
            prompts.append(tokenizer(entity_prompts(entities, level), p["prompt_max_len"]))
    spec = backbone_spec(cfg)
    return PretrainModel(CNClipBackbone(spec), fusion=_fusion_spec(cfg), contrastive=_contrastive_spec(cfg),
                         stage=stage, weights=p["weights"], epl_alpha=p["epl_alpha"], mlm_prob=p["mlm_prob"],
                         prompts=prompts, special_ids=tokenizer.special_ids, mask_id=tokenizer.mask_id,
                         grad_checkpointing=spec.grad_checkpointing)


__all__ = ["CopeModel", "PretrainModel", "QCDModel", "backbone_spec", "build_cope_model", "build_model",
           "build_pretrain_model"]
