"""The query-driven cross-domain model, Ours-Q (paper §4.3, Fig. 4), on the towers of any backbone family
(models.families); with train.mode=ft the same item encoder trains as the Siamese goods-video baseline of
Table 2 ("-ft")."""
import torch
import torch.nn.functional as F
from torch import nn

from datasets.batch import PAIR_KEYS, TRAIN_KEYS
from losses import QueryContrastiveLoss, text_reconstruction_loss, vision_reconstruction_loss
from models.families import group_parameters
from models.fusion import build_fusion
from models.reconstruction import TextReconstructor, VisionReconstructor
from models.video_pooling import build_video_pooling


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
        keys = PAIR_KEYS if self.mode == "ft" else TRAIN_KEYS
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"model batch (train.mode={self.mode}) lacks {missing}; expected keys {list(keys)}")
        if self.mode == "ft":
            return self._forward_pairs(batch)
        q_cls = self.backbone.encode_text(*self._text(batch["query_ids"], batch["query_mask"]))[0]
        u_cls, v_cls, t_cls, tokens = self._item_features(batch["frames"], batch["text_ids"], batch["text_mask"])
        out = {"loss_qu": self.contrastive(q_cls, u_cls),
               "loss_qv": self.contrastive(q_cls, v_cls),
               "loss_qt": self.contrastive(q_cls, t_cls)}
        if self.recon:
            logits = self.text_recon(batch["query_ids"], batch["query_mask"], v_cls)
            out["loss_recon_text"] = text_reconstruction_loss(logits, batch["query_ids"], batch["query_mask"])
            # Targets and inputs are detached: only the decoder and, through u_cls, the item branch learn from it.
            patches = tokens[:, :, 1:].mean(dim=1).detach()
            pred, mask = self.vision_recon(patches, u_cls)
            out["loss_recon_vision"] = vision_reconstruction_loss(pred, patches, mask)
        else:
            out["loss_recon_text"] = out["loss_recon_vision"] = q_cls.new_zeros(())
        names = {"qu": "loss_qu", "qv": "loss_qv", "qt": "loss_qt",
                 "recon_text": "loss_recon_text", "recon_vision": "loss_recon_vision"}
        out["loss"] = sum(self.weights[w] * out[name] for w, name in names.items())
        out["logit_scale"] = self.contrastive.scale().detach()
        return out

    def _forward_pairs(self, batch):
        """Siamese alignment: row i of the goods and of the video half share a query (pair_valid says which
        rows still do after an unreadable item was replaced); the other rows are the negatives."""
        u_goods = self._item_features(batch["frames"], batch["text_ids"], batch["text_mask"])[0]
        u_video = self._item_features(batch["video_frames"], batch["video_text_ids"], batch["video_text_mask"])[0]
        loss = self.contrastive(u_goods, u_video, valid=batch["pair_valid"])
        return {"loss": loss, "loss_pair": loss, "logit_scale": self.contrastive.scale().detach()}

    def param_groups(self):
        """Optimizer groups "visual" (the visual tower), "recon" (the reconstruction heads) and "other"; frozen
        parameters are left out, and so are groups left empty (e.g. recon off)."""
        return group_parameters(self, _recon_or_other, ("recon", "other"))


def _recon_or_other(name):
    return "recon" if name.startswith(("text_recon.", "vision_recon.")) else "other"
