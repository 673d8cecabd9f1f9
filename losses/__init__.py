from losses.epl import EntityClassifier, entity_prompts, epl_loss, progressive_weight, pseudo_labels
from losses.mlm import TiedMLMHead, mask_tokens, mlm_loss
from losses.pretrain import PRETRAIN_TERMS, pretrain_loss
from losses.query_contrastive import QueryContrastiveLoss, gather_features
from losses.reconstruction import text_reconstruction_loss, vision_reconstruction_loss
from losses.vtc import VTCLoss
from losses.vtm import sample_hard_negatives, vtm_loss, vtm_pairs

__all__ = ["EntityClassifier", "PRETRAIN_TERMS", "QueryContrastiveLoss", "TiedMLMHead", "VTCLoss", "entity_prompts",
           "epl_loss", "gather_features", "mask_tokens", "mlm_loss", "pretrain_loss", "progressive_weight",
           "pseudo_labels", "sample_hard_negatives", "text_reconstruction_loss", "vision_reconstruction_loss",
           "vtm_loss", "vtm_pairs"]
