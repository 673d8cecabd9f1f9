from losses.query_contrastive import QueryContrastiveLoss, gather_features
from losses.reconstruction import text_reconstruction_loss, vision_reconstruction_loss

__all__ = ["QueryContrastiveLoss", "gather_features", "text_reconstruction_loss", "vision_reconstruction_loss"]
