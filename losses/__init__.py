from losses.cope import PAIR_TERMS, QUERY_TERMS, ClassCentres, pair_terms, query_terms
from losses.epl import EntityClassifier, entity_prompts, epl_loss, progressive_weight, pseudo_labels
from losses.mlm import TiedMLMHead, mask_tokens, mlm_loss, mlm_sums
from losses.pretrain import PRETRAIN_TERMS, pretrain_loss
from losses.query_contrastive import QueryContrastiveLoss, gather_features
from losses.reconstruction import (text_reconstruction_loss, text_reconstruction_sums, token_mean,
                                   vision_reconstruction_loss)
from losses.vtc import VTCLoss
from losses.vtm import sample_hard_negatives, vtm_loss, vtm_pairs

__all__ = ["ClassCentres", "EntityClassifier", "PAIR_TERMS", "PRETRAIN_TERMS", "QUERY_TERMS", "QueryContrastiveLoss",
           "TiedMLMHead", "VTCLoss", "entity_prompts", "epl_loss", "gather_features", "mask_tokens", "mlm_loss",
           "mlm_sums", "pair_terms", "pretrain_loss", "progressive_weight", "pseudo_labels", "query_terms",
           "sample_hard_negatives", "text_reconstruction_loss", "text_reconstruction_sums", "token_mean",
           "vision_reconstruction_loss", "vtm_loss", "vtm_pairs"]
