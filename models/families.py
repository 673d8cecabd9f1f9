"""The pre-trained backbone families of Table 2 (`model.family`): the towers of each (`BACKBONES`), built and
checked against the model's sizes by `build_backbone`. The weights each reads and their check are in
models.weights; the tokenizers and pixel statistics are on the data side (datasets.families).

- chinese_clip: Chinese-CLIP (cn_clip) ViT + RoBERTa, models.backbone; a release checkpoint file, or null
  for random weights. Reads Chinese; the other four read English (data.translations).
- clip: OpenAI CLIP (`openai/clip-vit-base-patch16`), transformers' CLIPModel, from a save_pretrained folder.
- fashionclip: FashionCLIP (`patrickjohncyh/fashion-clip`), a CLIP ViT-B/32 fine-tuned on fashion products,
  same format and class.
- xclip: X-CLIP (`microsoft/xclip-base-patch16` or `-patch32`), transformers' XCLIPModel. As in the paper,
  an image is a one-frame video: every frame goes through X-CLIP's video encoder alone, and the frames of
  a micro-video are averaged afterwards by the caller.
- cyclip: CyCLIP (Goel et al., NeurIPS 2022). The README of https://github.com/goel-shashank/CyCLIP links
  its pre-trained checkpoints from a Google Drive folder
  (https://drive.google.com/drive/u/0/folders/1K0kPJZ3MA4KAdx3Fpq25dgW59wIf7M-x) without naming the
  architecture; the repository trains ResNet-50 by default (`--model_name RN50`) and its example notebook
  loads these checkpoints into RN50. Each file is what its training script saves,
  `torch.save({"epoch", "name", "state_dict", "optimizer"})`, the state dict with DDP's `module.` prefix
  and OpenAI CLIP's parameter names; open_clip builds the model from it (ResNet or ViT, inferred from
  the tensors) and its bundled BPE vocabulary (OpenAI CLIP's) tokenizes.
- cope: COPE (models.cope), a model of its own rather than towers of the QCD model: models.build_model builds
  it (models.OWN_MODELS), so it has no entry in BACKBONES; X-CLIP's video encoder from model.backbone.pretrained
  and cn_clip's RBT3 text tower from model.cope.text_pretrained.

Backbone protocol (models.qcd calls it on every family; the wrappers are models.backbone.CNClipBackbone
and models.english_backbones):
- `encode_frames(images [N,3,H,W], normalised)` -> `(proj [N, embed_dim], tokens [N, 1+P, vision_width])`:
  the library's own projected image feature (before L2 normalisation) and the vision tower's final token
  states, index 0 a global token (ViT: [CLS]; ResNet: the mean of the last feature map) and 1: the P patches.
- `encode_text(input_ids, attention_mask, keep_layer=None)` -> `(proj [B, embed_dim], hidden [B, L, text_width],
  kept)`: the library's projected text feature, the last hidden states and, for chinese_clip only, the
  hidden state entering layer `keep_layer` (the fusion encoder's input); the others raise ValueError for it.
- `vision_width`, `num_patches`, `text_width`, `vocab_size`, `context_length` (most text tokens the text tower
  takes), `embed_dim`, `image_size`, and `visual_prefixes` (parameter-name prefixes of the visual tower,
  relative to the backbone, for the optimizer's visual group: `group_parameters`).
- the constructor takes a `BackboneSpec`; its freeze (parts of FREEZE_PARTS) and grad_checkpointing are
  honoured; the towers' own logit_scale is not trained.
"""
from dataclasses import dataclass

from models.backbone import CNClipBackbone
from models.english_backbones import CyClipBackbone, HFClipBackbone, XClipBackbone
from models.weights import check_weights

BACKBONES = {"chinese_clip": CNClipBackbone, "clip": HFClipBackbone, "cyclip": CyClipBackbone,
             "fashionclip": HFClipBackbone, "xclip": XClipBackbone}
FREEZE_PARTS = ("visual", "text")


@dataclass(frozen=True)
class BackboneSpec:
    """The towers to build: model.family, model.backbone's settings, the joint width (model.embed_dim) and the
    input sizes they must take (data.image_size, data.query_max_len, data.text_max_len). vision_model,
    text_model and overrides name the cn_clip architecture (chinese_clip only)."""
    family: str
    embed_dim: int
    image_size: int
    query_max_len: int
    text_max_len: int
    vision_model: str
    text_model: str
    pretrained: str | None = None
    grad_checkpointing: bool = False
    freeze: tuple = ()
    overrides: dict | None = None


def check_sizes(spec, backbone):
    """ValueError unless the spec's embed_dim, image size and text lengths fit the built backbone."""
    source = f"the {spec.family} weights at {spec.pretrained}" if spec.pretrained else f"the {spec.family} model"
    if backbone.embed_dim != spec.embed_dim:
        raise ValueError(f"model.embed_dim={spec.embed_dim} differs from the projection size "
                         f"{backbone.embed_dim} of {source}; set model.embed_dim={backbone.embed_dim}")
    if backbone.image_size != spec.image_size:
        raise ValueError(f"data.image_size={spec.image_size} differs from the input size "
                         f"{backbone.image_size} of {source}; set data.image_size={backbone.image_size}")
    for key in ("query_max_len", "text_max_len"):
        length = getattr(spec, key)
        if length > backbone.context_length:
            raise ValueError(f"data.{key}={length} exceeds the {backbone.context_length} tokens the text "
                             f"tower of {source} takes; set data.{key} to at most {backbone.context_length}")


def build_backbone(spec):
    """The towers of spec.family, with their weights, checked against the spec's sizes."""
    check_weights(spec.family, spec.pretrained)
    backbone = BACKBONES[spec.family](spec)
    check_sizes(spec, backbone)
    return backbone


def group_parameters(model, group_of, names):
    """Optimizer groups [{"name", "params"}] of the trained parameters of a model that holds its towers as
    `backbone`: the visual tower's (its visual_prefixes) in "visual", every other parameter in group
    group_of(name), one of `names`; frozen parameters and empty groups are left out."""
    visual = tuple("backbone." + p for p in model.backbone.visual_prefixes)
    groups = {n: [] for n in ("visual", *names)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups["visual" if name.startswith(visual) else group_of(name)].append(p)
    return [{"name": n, "params": ps} for n, ps in groups.items() if ps]
