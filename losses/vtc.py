"""Visual-text contrastive loss L_vtc of the pre-training stage (paper §4.2, summed in Eq. 3).

Inside one domain (a goods image and its title, or a video's frames and its text): the symmetric
InfoNCE of the retrieval loss, visual->text and text->visual averaged, over L2-normalised features
with the same learnable, clamped temperature and local or global negatives.
"""
import torch
import torch.nn.functional as F

from losses.query_contrastive import QueryContrastiveLoss


class VTCLoss(QueryContrastiveLoss):
    def __init__(self, temperature=0.07, learn_temperature=True, max_logit_scale=100.0, negatives="local"):
        super().__init__(temperature, learn_temperature, max_logit_scale, negatives, symmetric=True)

    def forward(self, visual, text):
        """visual, text [B, D] (row i of each is a pair) -> (loss, sim).

        sim [B, B] = cos(visual_i, text_j) / tau over this rank's rows and columns, detached: the
        weights of VTM's hard-negative sampling (sim for visual->text, sim.t() for text->visual),
        which can only draw from the local batch, whose tokens the fusion encoder has.
        """
        loss = super().forward(visual, text)
        with torch.no_grad():
            sim = self.scale() * F.normalize(visual, dim=-1) @ F.normalize(text, dim=-1).t()
        return loss, sim
