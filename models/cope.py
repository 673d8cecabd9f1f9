"""COPE (model.family=cope) on Real20M's goods and micro-videos: shared visual and text towers, a projection head
per domain, one shared fusion encoder, and the losses of losses.cope.

- Visual tower: transformers' X-CLIP video encoder, run as XCLIPModel.get_video_features runs it (vision model
  with its cross-frame communication, visual projection, then the multi-frame integration transformer, MIT,
  over the T frames, mean-pooled). A goods image is a 1-frame clip: the cross-frame layers take the clip's own
  frame count and the MIT its first T frame positions (so T may not exceed the checkpoint's num_frames).
- Text tower: cn_clip's RBT3 configuration (3-layer Chinese RoBERTa, cn_clip's BertModel); its [CLS] state is
  the text feature. The weights are the text tower of the cn_clip release checkpoint that was trained with it
  (clip_cn_rn50.pt), a whole 3-layer tower aligned with images, rather than the first 3 of the 12 layers of
  the ViT-B/16 checkpoint's tower, whose third-layer states were never trained to be an output.
- Heads: a linear visual and a linear text head per domain (goods, video) onto model.embed_dim, and, with
  train.mode=query (COPE-Q), a text head for the query.
- Fusion: a small pre-norm transformer (model.cope.fusion_layers) over [the item's visual feature; its text
  tokens, linearly projected], each with a learnt type embedding; its first output token, after a layer
  norm and a linear layer, is the fused feature.

The domain of an item is its frame count: T = 1 is a goods item, T > 1 a micro-video (engine.checks requires
data.num_frames >= 2 for this family), so evaluate.extract calls encode_item(frames, ids, mask) unchanged.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from cn_clip.clip.configuration_bert import BertConfig
from cn_clip.clip.modeling_bert import BertModel

from datasets.batch import PAIR_KEYS, TRAIN_KEYS
from losses.cope import ClassCentres, pair_terms, query_terms
from losses.query_contrastive import QueryContrastiveLoss
from models.backbone import _read_cn_clip_config, read_checkpoint_state_dict
from utils.checkpoint import WeightsMismatch

DOMAINS = ("goods", "video")
# the text head of encode_query when the model has no query head (train.mode=ft: a text query searches goods)
QUERY_FALLBACK = "goods"


def build_xclip(folder, overrides=None):
    """transformers' XCLIPModel: from a save_pretrained folder, or random from XCLIPConfig(**overrides)."""
    from transformers import XCLIPConfig, XCLIPModel

    if folder:
        return XCLIPModel.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    return XCLIPModel(XCLIPConfig(**(overrides or {})))


class XClipVideoEncoder(nn.Module):
    """The visual parts of an XCLIPModel (vision_model, visual_projection, mit), for clips of 1..num_frames.
    grad_checkpointing recomputes the vision model of each call as a whole: its cross-frame layers read the
    clip length from an attribute set per call, which transformers' per-layer recomputation would read after a
    later call (of another clip length) had changed it."""

    def __init__(self, xclip, grad_checkpointing=False):
        super().__init__()
        self.grad_checkpointing = bool(grad_checkpointing)
        self.vision_model, self.visual_projection, self.mit = xclip.vision_model, xclip.visual_projection, xclip.mit
        self.max_frames = xclip.config.vision_config.num_frames
        self.image_size = xclip.config.vision_config.image_size
        self.width = xclip.config.projection_dim

    def forward(self, frames):
        """frames [B, T, 3, H, W] -> the MIT's pooled clip feature [B, projection_dim]."""
        b, t = frames.shape[:2]
        if t > self.max_frames:
            raise ValueError(f"clips of {t} frames: the X-CLIP video encoder has position embeddings for "
                             f"{self.max_frames} frames; set data.num_frames to at most {self.max_frames}")
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            pooled = checkpoint(self._frames, frames.flatten(0, 1), t, use_reentrant=False)
        else:
            pooled = self._frames(frames.flatten(0, 1), t)
        per_frame = self.visual_projection(pooled).view(b, t, -1)
        positions = {"position_embedding": self.mit.position_embedding[:, :t]}
        return functional_call(self.mit, positions, (per_frame,)).pooler_output

    def _frames(self, images, t):
        for layer in self.vision_model.encoder.layers:
            layer.num_frames = t
        return self.vision_model(pixel_values=images).pooler_output


def bert_config(text_model, overrides=None):
    """cn_clip's BertConfig of the named cn_clip text config (model.cope.text_model) and its overrides
    (model.cope.text_overrides, cn_clip's argument names: text_hidden_size, ...)."""
    args = {**_read_cn_clip_config(text_model), **(overrides or {})}
    return BertConfig(vocab_size_or_config_json_file=args["vocab_size"], hidden_size=args["text_hidden_size"],
                      num_hidden_layers=args["text_num_hidden_layers"],
                      num_attention_heads=args["text_num_attention_heads"],
                      intermediate_size=args["text_intermediate_size"], hidden_act=args["text_hidden_act"],
                      hidden_dropout_prob=args["text_hidden_dropout_prob"],
                      attention_probs_dropout_prob=args["text_attention_probs_dropout_prob"],
                      max_position_embeddings=args["text_max_position_embeddings"],
                      type_vocab_size=args["text_type_vocab_size"], initializer_range=args["text_initializer_range"])


def load_text_tower(bert, path):
    """The `bert.` tensors of a cn_clip checkpoint into `bert`, strictly (WeightsMismatch naming what differs)."""
    state = {k[len("bert."):]: v.float() for k, v in read_checkpoint_state_dict(path).items() if k.startswith("bert.")}
    expected = bert.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        raise WeightsMismatch(f"model.cope.text_pretrained={path}: its text tower does not fit model.cope.text_model "
                              f"({len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} of another "
                              f"shape, e.g. {(missing + unexpected + shapes)[0]}); expected a cn_clip checkpoint "
                              "trained with that text config (RBT3-chinese: clip_cn_rn50.pt)")
    bert.load_state_dict(state)


class FusionEncoder(nn.Module):
    """Pre-norm transformer over [visual feature; projected text tokens] -> the first token's output."""

    def __init__(self, dim, text_width, layers, heads):
        super().__init__()
        self.text_in = nn.Linear(text_width, dim)
        self.types = nn.Parameter(torch.zeros(2, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, visual, text_states, attention_mask):
        tokens = torch.cat([visual.unsqueeze(1) + self.types[0], self.text_in(text_states) + self.types[1]], dim=1)
        pad = torch.cat([attention_mask.new_ones(attention_mask.shape[0], 1), attention_mask], dim=1) == 0
        return self.out(self.norm(self.encoder(tokens, src_key_padding_mask=pad)[:, 0]))


class CopeModel(nn.Module):
    """COPE's dual-tower model with the accumulation protocol (embed / batch_terms / total)."""

    def __init__(self, xclip, bert, *, embed_dim, mode, contrastive, weights, classes, fusion_layers, fusion_heads,
                 grad_checkpointing=False):
        """xclip: an XCLIPModel (its visual parts are kept); bert: cn_clip's BertModel; mode: train.mode;
        contrastive: a losses.query_contrastive.ContrastiveSpec; weights: loss.cope.weights; classes: the
        keyword arguments of losses.cope.ClassCentres (num_classes, negatives, temperature, momentum);
        grad_checkpointing: of the visual tower (XClipVideoEncoder)."""
        super().__init__()
        self.mode = mode
        self.visual = XClipVideoEncoder(xclip, grad_checkpointing)
        self.text = bert
        width = bert.config.hidden_size
        self.visual_heads = nn.ModuleDict({d: nn.Linear(self.visual.width, embed_dim) for d in DOMAINS})
        heads = DOMAINS + (("query",) if mode == "query" else ())
        self.text_heads = nn.ModuleDict({d: nn.Linear(width, embed_dim) for d in heads})
        self.fusion = FusionEncoder(embed_dim, width, fusion_layers, fusion_heads)
        self.contrastive = QueryContrastiveLoss(contrastive.temperature, contrastive.learn_temperature,
                                                contrastive.max_logit_scale, contrastive.negatives,
                                                contrastive.symmetric)
        self.weights = dict(weights)
        self.classes = ClassCentres(dim=embed_dim, **classes)
        # the class centres stay on the CPU and every rank updates them alike (losses.cope.ClassCentres)
        self._ddp_params_and_buffers_to_ignore = ["classes.centres", "classes.seen"]

    @property
    def image_size(self):
        return self.visual.image_size

    @property
    def context_length(self):
        return self.text.config.max_position_embeddings

    def _text_states(self, input_ids, attention_mask):
        return self.text(input_ids, attention_mask=attention_mask)[0]

    def _item(self, frames, input_ids, attention_mask, domain=None):
        """-> {"fused", "visual", "text"} [B, embed_dim] (not normalised); domain: from T when None."""
        if frames.dim() != 5:
            raise ValueError(f"frames: expected [B, T, 3, H, W], got shape {tuple(frames.shape)}")
        domain = domain or ("goods" if frames.shape[1] == 1 else "video")
        visual = self.visual_heads[domain](self.visual(frames))
        states = self._text_states(input_ids, attention_mask)
        text = self.text_heads[domain](states[:, 0])
        return {"fused": self.fusion(visual, states, attention_mask), "visual": visual, "text": text}

    def encode_item(self, frames, input_ids, attention_mask):
        """frames [B,T,3,H,W] (T = 1: goods) + item text -> L2-normalised `fused`, `visual`, `text` [B, embed_dim]."""
        return {k: F.normalize(v, dim=-1) for k, v in self._item(frames, input_ids, attention_mask).items()}

    def encode_query(self, input_ids, attention_mask):
        """-> L2-normalised query feature [B, embed_dim] (the query head; without one, the goods text head)."""
        head = self.text_heads["query"] if "query" in self.text_heads else self.text_heads[QUERY_FALLBACK]
        return F.normalize(head(self._text_states(input_ids, attention_mask)[:, 0]), dim=-1)

    def _labels(self, batch):
        if self.weights["cls"] == 0:
            return {}
        if "query_index" not in batch:
            raise KeyError("model.family=cope with loss.cope.weights.cls > 0 reads each sample's query index "
                           "(batch key query_index) as its class; the batch has none")
        return {"labels": batch["query_index"]}

    def embed(self, batch):
        """-> (embeddings, {}): ft: goods_* and video_* features (fused, visual, text), pair_valid; query: query,
        item_* features and goods (bool per row); with the classification term also the query indices (labels)."""
        keys = PAIR_KEYS if self.mode == "ft" else TRAIN_KEYS
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"model batch (train.mode={self.mode}) lacks {missing}; expected keys {list(keys)}")
        if self.mode == "ft":
            goods = self._item(batch["frames"], batch["text_ids"], batch["text_mask"], "goods")
            video = self._item(batch["video_frames"], batch["video_text_ids"], batch["video_text_mask"], "video")
            emb = {**{f"goods_{k}": v for k, v in goods.items()}, **{f"video_{k}": v for k, v in video.items()},
                   "pair_valid": batch["pair_valid"]}
        else:
            item = self._item(batch["frames"], batch["text_ids"], batch["text_mask"])
            query = self.text_heads["query"](self._text_states(batch["query_ids"], batch["query_mask"])[:, 0])
            is_goods = torch.full((query.shape[0],), batch["frames"].shape[1] == 1, device=query.device)
            emb = {"query": query, **{f"item_{k}": v for k, v in item.items()}, "goods": is_goods}
        return {**emb, **self._labels(batch)}, {}

    def batch_terms(self, embeddings):
        """The contrastive terms of losses.cope and loss_cls. In training (grad enabled) this also moves the class
        centres, once per call: the engine calls it once per optimizer step."""
        e = embeddings
        if self.mode == "ft":
            goods, video = _features(e, "goods_"), _features(e, "video_")
            terms = pair_terms(self.contrastive, goods, video, valid=e["pair_valid"])
            if "labels" in e:
                # a replaced video (pair_valid False) belongs to another query: only its goods row is classified
                valid = e["pair_valid"].bool()
                fused = torch.cat([goods["fused"], video["fused"][valid]])
                labels = torch.cat([e["labels"], e["labels"][valid]])
        else:
            item = _features(e, "item_")
            terms = query_terms(self.contrastive, e["query"], item, goods=bool(e["goods"][0]))
            if "labels" in e:
                fused, labels = item["fused"], e["labels"]
        if "labels" in e:
            terms["loss_cls"] = self.classes.loss(fused, labels)
            if self.training and torch.is_grad_enabled():
                self.classes.update(fused, labels)
        else:
            terms["loss_cls"] = next(iter(terms.values())).new_zeros(())
        return terms

    def total(self, terms):
        return sum(self.weights[name[len("loss_"):]] * value for name, value in terms.items()
                   if name.startswith("loss_"))

    def forward(self, batch):
        embeddings, local = self.embed(batch)
        out = {**local, **self.batch_terms(embeddings)}
        out["loss"] = self.total(out)
        out["logit_scale"] = self.contrastive.scale().detach()
        return out

    def param_groups(self):
        """Optimizer groups "visual" (the X-CLIP video encoder), "text" (the RoBERTa tower) and "new" (heads,
        fusion, temperature); frozen parameters are left out."""
        groups = {"visual": [], "text": [], "new": []}
        for name, p in self.named_parameters():
            if p.requires_grad:
                part = name.split(".", 1)[0]
                groups["visual" if part == "visual" else "text" if part == "text" else "new"].append(p)
        return [{"name": n, "params": ps} for n, ps in groups.items() if ps]


def _features(embeddings, prefix):
    return {k[len(prefix):]: v for k, v in embeddings.items() if k.startswith(prefix)}


def cope_model(*, xclip_folder, xclip_overrides, text_model, text_overrides, text_pretrained, image_size, num_frames,
               text_lengths, freeze=(), **kwargs):
    """A CopeModel from its weights (None: random), checked against the data sizes (data.image_size,
    data.num_frames and {key: length} of the text settings); freeze: parts of models.families.FREEZE_PARTS."""
    xclip = build_xclip(xclip_folder, copy.deepcopy(xclip_overrides))
    bert = BertModel(bert_config(text_model, text_overrides))
    if text_pretrained:
        load_text_tower(bert, text_pretrained)
    model = CopeModel(xclip, bert, **kwargs)
    source = f"the X-CLIP weights at {xclip_folder}" if xclip_folder else "the random X-CLIP model"
    if model.image_size != image_size:
        raise ValueError(f"data.image_size={image_size} differs from the input size {model.image_size} of {source}; "
                         f"set data.image_size={model.image_size}")
    if num_frames > model.visual.max_frames:
        raise ValueError(f"data.num_frames={num_frames} exceeds the {model.visual.max_frames} frame positions of "
                         f"{source}; set data.num_frames to at most {model.visual.max_frames}")
    for key, length in text_lengths.items():
        if length > model.context_length:
            raise ValueError(f"data.{key}={length} exceeds the {model.context_length} positions of the text tower "
                             f"(model.cope.text_model={text_model}); set data.{key} to at most {model.context_length}")
    if "visual" in freeze:
        model.visual.requires_grad_(False)
    if "text" in freeze:
        model.text.requires_grad_(False)
    return model
