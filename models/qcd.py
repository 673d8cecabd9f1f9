"""The query-driven cross-domain model, Ours-Q (paper §4.3, Fig. 4), on the towers of any backbone family
(models.families); with train.mode=ft the same item encoder trains as the Siamese goods-video baseline of
Table 2 ("-ft")."""
import torch
import torch.nn.functional as F
from torch import nn

from datasets.batch import PAIR_KEYS, TRAIN_KEYS
from losses import QueryContrastiveLoss, text_reconstruction_sums, token_mean, vision_reconstruction_loss
from models.families import group_parameters
from models.fusion import build_fusion
from models.reconstruction import TextReconstructor, VisionReconstructor
from models.video_pooling import build_video_pooling

# the terms of Eq. 8, in the order they are summed (each weighted by loss.weights.<name>)
QUERY_TERMS = ("qu", "qv", "qt", "recon_text", "recon_vision")


class QCDModel(nn.Module):
    """Query branch: q_cls from the text tower. Item branch: per-frame [CLS] -> video pooling -> v_cls;
    item text -> t_cls; fusion of text tokens and visual tokens -> u_cls. Training loss: Eq. 8 (train.mode=query),
    or InfoNCE between the u_cls of a goods item and of a micro-video of the same query (train.mode=ft)."""

    def __init__(self, backbone, *, pooling, fusion, contrastive, weights, mode, num_frames, query_max_len,
                 text_attention_mask=True, grad_checkpointing=False, recon=None, token_ids=None):
        """backbone: the built towers (models.families.build_backbone), whose embed_dim every feature has;
        pooling (PoolingSpec) over clips of num_frames frames; fusion (FusionSpec); contrastive (ContrastiveSpec)
        of the InfoNCE terms, weighted by weights {qu, qv, qt, recon_text, recon_vision} (Eq. 8); mode: train.mode;
        recon (ReconSpec, None: no reconstruction) decodes queries of up to query_max_len tokens of the
        tokenizer whose (start, end, pad) ids are token_ids; grad_checkpointing: of the fusion and decoder
        layers (the backbone has its own)."""
        super().__init__()
        self.mode = mode
        self.backbone = backbone
        dim = backbone.embed_dim
        self.video_pooling = build_video_pooling(pooling, dim, num_frames)
        self.fusion = build_fusion(fusion, self.backbone, dim, grad_checkpointing)
        self.text_attention_mask = bool(text_attention_mask)
        self.contrastive = QueryContrastiveLoss(contrastive.temperature, contrastive.learn_temperature,
                                                contrastive.max_logit_scale, contrastive.negatives,
                                                contrastive.symmetric)
        self.weights = dict(weights)
        self.recon = recon is not None
        if self.recon:
            self.text_recon = TextReconstructor(recon, self.backbone.vocab_size, dim, query_max_len, token_ids,
                                                grad_checkpointing)
            self.vision_recon = VisionReconstructor(recon, self.backbone.vision_width, self.backbone.num_patches, dim)

    def _text(self, input_ids, attention_mask):
        """The text inputs the towers see. Without model.backbone.text_attention_mask the ids are cut to
        the batch's longest text and every position is attended, padding included: the authors' TextCLIP
        calls the BERT without a mask on batches padded to their longest text."""
        if self.text_attention_mask:
            return input_ids, attention_mask
        longest = int(attention_mask.sum(dim=1).max())
        input_ids = input_ids[:, :longest]
        return input_ids, torch.ones_like(input_ids)

    def encode_query(self, input_ids, attention_mask):
        """-> L2-normalised q_cls [B, embed_dim]."""
        return F.normalize(self.backbone.encode_text(*self._text(input_ids, attention_mask))[0], dim=-1)

    def _item_features(self, frames, input_ids, attention_mask):
        if frames.dim() != 5:
            raise ValueError(f"frames: expected [B, T, 3, H, W], got shape {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        h, tokens = self.backbone.encode_frames(frames.flatten(0, 1))
        h, tokens = h.view(b, t, -1), tokens.view(b, t, *tokens.shape[1:])
        v_cls = self.video_pooling(h)
        input_ids, attention_mask = self._text(input_ids, attention_mask)
        keep = self.fusion.text_layer if self.fusion.uses_tokens else None
        t_cls, final_states, text_states = self.backbone.encode_text(input_ids, attention_mask, keep_layer=keep)
        if keep is None:
            text_states = final_states
        u_cls = self.fusion(v_cls, t_cls, text_states, attention_mask, tokens)
        return u_cls, v_cls, t_cls, tokens

    def encode_item(self, frames, input_ids, attention_mask):
        """frames [B,T,3,H,W] (T = 1 for goods) + item text -> L2-normalised `fused`, `visual`, `text` [B, embed_dim]."""
        u_cls, v_cls, t_cls, _ = self._item_features(frames, input_ids, attention_mask)
        return {"fused": F.normalize(u_cls, dim=-1), "visual": F.normalize(v_cls, dim=-1),
                "text": F.normalize(t_cls, dim=-1)}

    def forward(self, batch):
        embeddings, local = self.embed(batch)
        out = {**local, **self.batch_terms(embeddings)}
        out["loss"] = self.total(out)
        return out

    def embed(self, batch):
        """The accumulation protocol (engine/trainer.py): (embeddings, local). Query mode: q, u, v, t [b, D]
        and, with reconstruction, each query's summed next-token loss and token count (the text loss is a mean
        over the batch's tokens: the counts differ per query); local: the vision reconstruction (a fixed number
        of masked patches per item). ft: the goods and video u [b, D] and pair_valid."""
        keys = PAIR_KEYS if self.mode == "ft" else TRAIN_KEYS
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"model batch (train.mode={self.mode}) lacks {missing}; expected keys {list(keys)}")
        if self.mode == "ft":
            u_goods = self._item_features(batch["frames"], batch["text_ids"], batch["text_mask"])[0]
            u_video = self._item_features(batch["video_frames"], batch["video_text_ids"], batch["video_text_mask"])[0]
            return {"goods": u_goods, "video": u_video, "valid": batch["pair_valid"]}, {}
        q_cls = self.backbone.encode_text(*self._text(batch["query_ids"], batch["query_mask"]))[0]
        u_cls, v_cls, t_cls, tokens = self._item_features(batch["frames"], batch["text_ids"], batch["text_mask"])
        embeddings = {"q": q_cls, "u": u_cls, "v": v_cls, "t": t_cls}
        if not self.recon:
            zero = q_cls.new_zeros(())
            return embeddings, {"loss_recon_text": zero, "loss_recon_vision": zero}
        logits = self.text_recon(batch["query_ids"], batch["query_mask"], v_cls)
        embeddings["recon_sum"], embeddings["recon_count"] = text_reconstruction_sums(
            logits, batch["query_ids"], batch["query_mask"])
        # Targets and inputs are detached: only the decoder and, through u_cls, the item branch learn from it.
        patches = tokens[:, :, 1:].mean(dim=1).detach()
        pred, mask = self.vision_recon(patches, u_cls)
        return embeddings, {"loss_recon_vision": vision_reconstruction_loss(pred, patches, mask)}

    def batch_terms(self, embeddings):
        """Query mode: Eq. 6's three InfoNCE terms and the text reconstruction over the batch. ft: Siamese
        alignment, row i of the goods and of the video half share a query (pair_valid says which rows still do
        after an unreadable item was replaced); the other rows are the negatives. Also logs logit_scale."""
        e = embeddings
        if self.mode == "ft":
            terms = {"loss_pair": self.contrastive(e["goods"], e["video"], valid=e["valid"])}
        else:
            terms = {f"loss_q{x}": self.contrastive(e["q"], e[x]) for x in ("u", "v", "t")}
            if self.recon:
                terms["loss_recon_text"] = token_mean(e["recon_sum"], e["recon_count"])
        terms["logit_scale"] = self.contrastive.scale().detach()
        return terms

    def total(self, terms):
        """Eq. 8's weighted sum of the loss terms present in `terms` (ft: the alignment term alone)."""
        if self.mode == "ft":
            return terms["loss_pair"]
        return sum(self.weights[w] * terms[f"loss_{w}"] for w in QUERY_TERMS if f"loss_{w}" in terms)

    def param_groups(self):
        """Optimizer groups "visual" (the visual tower), "recon" (the reconstruction heads) and "other"; frozen
        parameters are left out, and so are groups left empty (e.g. recon off)."""
        return group_parameters(self, _recon_or_other, ("recon", "other"))


def _recon_or_other(name):
    return "recon" if name.startswith(("text_recon.", "vision_recon.")) else "other"
