"""The multimodal pre-training model (paper §4.2, Eq. 1-3).

It holds the parts of Ours-Q that pre-training shapes, under the same names (`backbone.*`,
`fusion.*`), so that `init_from` a pre-training checkpoint fills them in the retrieval model,
plus the pre-training heads (`vtm_head`, `mlm_head`, `entity_head`) and the VTC temperature.

For an item (a goods image with its title, or a video's frames with its text):
- v: the mean of the frames' projected [CLS] features; t: the text tower's projected [CLS];
- VTC: symmetric InfoNCE of v and t (`loss.negatives`, `loss.temperature` as in retrieval);
- VTM (L_otm): the fusion encoder reads (text, visual tokens) for each positive and for one hard
  negative text per item and one hard negative item per text, drawn from the VTC similarities;
  a 2-way head on its first token;
- MLM: the item text with 15 % of its tokens chosen, through the text tower and the fusion
  encoder, predicted by a head tied to the word embeddings;
- EPL: pseudo-labels p^l from v and the prompt embeddings e^l (Eq. 1, no gradient), predictions
  c^l from the mean of the fusion tokens u, L_epl of Eq. 2 with w_t of the batch's epoch.

`pretrain.stage` picks the terms: 1 = VTC + VTM + MLM, 2 = EPL with the towers frozen (in eval
mode, so no dropout changes their features), joint = all four (Eq. 3).
"""
import torch
from torch import nn

from losses import (PRETRAIN_TERMS, EntityClassifier, TiedMLMHead, VTCLoss, epl_loss, mask_tokens, mlm_sums,
                    pretrain_loss, progressive_weight, pseudo_labels, sample_hard_negatives, token_mean, vtm_loss,
                    vtm_pairs)
from losses.epl import NUM_LEVELS
from losses.mlm import IGNORE_INDEX
from models.families import group_parameters
from models.fusion import COPIED_LAYER_PARTS, FusionEncoder

STAGE_TERMS = {"1": ("vtc", "otm", "mlm"), "2": ("epl",), "joint": ("vtc", "otm", "mlm", "epl")}
BATCH_KEYS = ("frames", "text_ids", "text_mask", "epoch")


class PretrainModel(nn.Module):
    def __init__(self, backbone, *, fusion, contrastive, stage, weights, epl_alpha, mlm_prob, prompts=None,
                 special_ids=(), mask_id=None, grad_checkpointing=False):
        """backbone: the built chinese_clip towers (models.backbone.CNClipBackbone); fusion: the FusionSpec of the
        fusion encoder; contrastive: the ContrastiveSpec of VTC; stage: a key of STAGE_TERMS; weights: {term:
        weight} of Eq. 3; epl_alpha: of w_t; mlm_prob: the share of text tokens chosen for MLM. prompts:
        NUM_LEVELS pairs (input_ids, attention_mask) [M_l, L] of the entity prompts (EPL stages only);
        special_ids, mask_id: the tokenizer's (MLM stages only); grad_checkpointing: of the fusion layers."""
        super().__init__()
        self.terms = STAGE_TERMS[stage]
        self.weights = {k: v for k, v in weights.items() if k in self.terms}
        self.alpha = epl_alpha
        self.backbone = backbone
        self.fusion = FusionEncoder(backbone, fusion.num_layers, fusion.text_input, fusion.proj_bias,
                                    grad_checkpointing)
        # u_cls's projection serves retrieval only; it stays the text tower's initial projection
        self.fusion.proj.requires_grad_(False)
        self.vtc = VTCLoss(contrastive.temperature, contrastive.learn_temperature, contrastive.max_logit_scale,
                           contrastive.negatives)
        hidden = self.backbone.text_width
        if "otm" in self.terms:
            self.vtm_head = nn.Linear(hidden, 2)
        if "mlm" in self.terms:
            self.mlm_head = TiedMLMHead(self.backbone.clip.bert.embeddings.word_embeddings, hidden)
            self.mlm_prob, self.mask_id, self.special_ids = mlm_prob, mask_id, tuple(special_ids)
        if "epl" in self.terms:
            if prompts is None or len(prompts) != NUM_LEVELS:
                raise ValueError(f"EPL needs the prompts of the {NUM_LEVELS} entity levels")
            for level, (ids, mask) in enumerate(prompts, start=1):
                self.register_buffer(f"prompt_ids_{level}", ids, persistent=False)
                self.register_buffer(f"prompt_mask_{level}", mask, persistent=False)
            self.entity_head = EntityClassifier(hidden, [len(ids) for ids, _ in prompts])
        self.towers_frozen = "vtc" not in self.terms
        if self.towers_frozen:
            # stage 2: only the fusion encoder and the EPL head learn; tau only scales the pseudo-labels
            self.backbone.requires_grad_(False)
            self.vtc.requires_grad_(False)
        self._entity_cache = None

    def train(self, mode=True):
        super().train(mode)
        if self.towers_frozen:
            self.backbone.eval()
        return self

    def _encode(self, frames, text_ids, text_mask):
        b, t = frames.shape[:2]
        h, tokens = self.backbone.encode_frames(frames.flatten(0, 1))
        v = h.view(b, t, -1).mean(dim=1)
        t_cls, _, states = self.backbone.encode_text(text_ids, text_mask, keep_layer=self.fusion.start_layer)
        return v, tokens.view(b, t, *tokens.shape[1:]), t_cls, states

    def entity_embeddings(self):
        """e^l [M_l, D] for each level: the text tower's projected [CLS] of the prompts, without gradient;
        computed once while the towers are frozen, every step while they learn."""
        if self._entity_cache is not None:
            return self._entity_cache
        with torch.no_grad():
            embeddings = [self.backbone.encode_text(getattr(self, f"prompt_ids_{level}"),
                                                    getattr(self, f"prompt_mask_{level}"))[0]
                          for level in range(1, NUM_LEVELS + 1)]
        if self.towers_frozen:
            self._entity_cache = embeddings
        return embeddings

    def forward(self, batch):
        embeddings, local = self.embed(batch)
        out = {**local, **self.batch_terms(embeddings)}
        out["loss"] = self.total(out)
        return out

    def embed(self, batch):
        """The accumulation protocol (engine/trainer.py): (embeddings, local). With VTC, the embeddings are v,
        t and the states VTM's fusion pass reads (the text states entering the copied layers, their mask, the
        visual tokens): VTM draws its negatives from the whole batch's similarities, and joint EPL reads that
        pass's positives. MLM: each item's summed token loss and token count (a mean over the batch's chosen
        tokens). Stage 2: EPL is per item, a local term."""
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"pre-training batch lacks {missing}; expected keys {list(BATCH_KEYS)}")
        frames, ids, mask = batch["frames"], batch["text_ids"], batch["text_mask"]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.towers_frozen):
            v, tokens, t_cls, states = self._encode(frames, ids, mask)
        embeddings, local = {}, {}
        if "vtc" in self.terms:
            embeddings.update(v=v, t=t_cls, states=states, mask=mask, tokens=tokens)
        if "mlm" in self.terms:
            masked, labels = mask_tokens(ids, mask, self.mask_id, self.mlm_head.decoder.weight.shape[0],
                                         self.special_ids, self.mlm_prob)
            masked_states = self.backbone.encode_text(masked, mask, keep_layer=self.fusion.start_layer)[2]
            fused = self.fusion.encode_tokens(masked_states, mask, tokens)
            chosen = labels != IGNORE_INDEX
            rows = chosen.nonzero()[:, 0]
            embeddings["mlm_sum"], embeddings["mlm_count"] = mlm_sums(self.mlm_head(fused[chosen]), labels[chosen],
                                                                      rows, len(ids))
        if "epl" in self.terms:
            epoch = int(batch["epoch"])
            if "vtc" in self.terms:
                embeddings["epoch"] = torch.full((len(ids),), epoch, device=ids.device)
            else:
                u = self.fusion.encode_tokens(states, mask, tokens)
                local.update(self._epl(v, u, mask, epoch))
        return embeddings, local

    def _epl(self, v, u, mask, epoch):
        targets = pseudo_labels(v, self.entity_embeddings(), self.vtc.scale().detach())
        w_t = progressive_weight(epoch, self.alpha)
        return {"loss_epl": epl_loss(self.entity_head(u, mask), targets, w_t), "stat_epl_w_t": torch.tensor(w_t)}

    def batch_terms(self, embeddings):
        """VTC, VTM (negatives drawn from the batch's VTC similarities, the fusion encoder run on the 3B pairs),
        joint EPL on that pass's positive pairs, and MLM's token mean; also logs logit_scale."""
        e, terms = embeddings, {}
        if "vtc" in self.terms:
            terms["loss_vtc"], sim = self.vtc(e["v"], e["t"])
            neg_text, neg_visual = sample_hard_negatives(sim, sim.t())
            vi, ti = vtm_pairs(neg_text, neg_visual)
            fused = self.fusion.encode_tokens(e["states"][ti], e["mask"][ti], e["tokens"][vi])
            terms["loss_otm"] = vtm_loss(self.vtm_head(fused[:, 0]))
            if "epl" in self.terms:
                u = fused[:len(e["v"])]  # the positive pairs come first
                terms.update(self._epl(e["v"], u, e["mask"], int(e["epoch"][0])))
        if "mlm" in self.terms:
            terms["loss_mlm"] = token_mean(e["mlm_sum"], e["mlm_count"])
        terms["logit_scale"] = self.vtc.scale().detach()
        return terms

    def total(self, terms):
        """Eq. 3's weighted sum of the loss terms present in `terms`."""
        present = {name: terms[f"loss_{name}"] for name in PRETRAIN_TERMS if f"loss_{name}" in terms}
        return pretrain_loss(present, self.weights)["loss"]

    def param_groups(self):
        """Optimizer groups by where a parameter's values come from, frozen parameters left out: "visual" and
        "text" hold what is read from Chinese-CLIP, the visual tower and the rest (the text tower, and the parts
        of its layers the fusion encoder copies); "new" what pre-training initialises (cross-attention, the
        visual input of the fusion, the heads, the VTC temperature)."""
        return group_parameters(self, _text_or_new, ("text", "new"))


def _text_or_new(name):
    return "text" if name.startswith("backbone.") or _copied_fusion_part(name) else "new"


def _copied_fusion_part(name):
    """Whether `name` is in a block of a fusion layer copied from the text tower (fusion.proj, the other copy,
    stays frozen in pre-training)."""
    parts = name.split(".")
    return parts[:2] == ["fusion", "layers"] and parts[3] in COPIED_LAYER_PARTS
