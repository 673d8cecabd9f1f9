"""Towers of the English-text families of models.families: CLIP and FashionCLIP (transformers' CLIPModel),
X-CLIP (XCLIPModel) and CyCLIP (an OpenAI-CLIP state dict built by open_clip).

Each wrapper keeps the library's model as `model` and calls the library's own feature methods, so `proj` is
exactly what the library returns for the same weights; the backbone protocol is described in models.families.
Visual tokens are the vision tower's final token states after its last norm (the one the library applies to
the pooled token), as models.backbone does for Chinese-CLIP.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from utils.checkpoint import read_torch_file, state_dict_of


class EnglishBackbone(nn.Module):
    """What the four families share: freezing by parameter-name prefix, a frozen logit_scale, no kept text
    state. Subclasses set `model`, `visual_prefixes` and `text_prefixes` before calling `_finish`."""

    visual_prefixes = ()
    text_prefixes = ()

    def __init__(self, spec):
        """spec: a models.families.BackboneSpec."""
        super().__init__()
        self.family = spec.family

    def _finish(self, freeze):
        # The contrastive loss owns the (learnable) temperature; the model's own one stays unused.
        self.model.logit_scale.requires_grad_(False)
        frozen = tuple(p for part in freeze for p in getattr(self, f"{part}_prefixes"))
        for name, param in self.named_parameters():
            if frozen and name.startswith(frozen):
                param.requires_grad_(False)

    def _no_kept_state(self, keep_layer):
        if keep_layer is not None:
            raise ValueError(f"model.family={self.family}: the backbone gives no intermediate text state "
                             f"(keep_layer={keep_layer}); model.fusion.type=fusion is for chinese_clip only, use add "
                             "or combiner")


class HFClipBackbone(EnglishBackbone):
    """clip, fashionclip: transformers' CLIPModel from a save_pretrained folder."""

    visual_prefixes = ("model.vision_model.", "model.visual_projection.")
    text_prefixes = ("model.text_model.", "model.text_projection.")

    def __init__(self, spec):
        super().__init__(spec)
        self.model = self.load(spec.pretrained)
        if spec.grad_checkpointing:
            self.model.activation_checkpointing_enable({"use_reentrant": False})
        self._finish(spec.freeze)

    @staticmethod
    def load(folder):
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(folder, dtype=torch.float32, local_files_only=True)

    @property
    def _vision_config(self):
        return self.model.config.vision_config

    @property
    def vision_width(self):
        return self._vision_config.hidden_size

    @property
    def num_patches(self):
        return (self._vision_config.image_size // self._vision_config.patch_size) ** 2

    @property
    def image_size(self):
        return self._vision_config.image_size

    @property
    def text_width(self):
        return self.model.config.text_config.hidden_size

    @property
    def vocab_size(self):
        return self.model.config.text_config.vocab_size

    @property
    def context_length(self):
        return self.model.config.text_config.max_position_embeddings

    @property
    def embed_dim(self):
        return self.model.config.projection_dim

    def encode_frames(self, images):
        """images [N,3,H,W] -> (get_image_features [N, embed_dim], tokens after post_layernorm [N, 1+P, width])."""
        out = self.model.get_image_features(pixel_values=images)
        return out.pooler_output, self.model.vision_model.post_layernorm(out.last_hidden_state)

    def encode_text(self, input_ids, attention_mask, keep_layer=None):
        """-> (get_text_features [B, embed_dim], last hidden states [B, L, text_width], None)."""
        self._no_kept_state(keep_layer)
        out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return out.pooler_output, out.last_hidden_state, None


def one_frame_xclip(folder):
    """XCLIPModel of a save_pretrained folder, rebuilt for one-frame videos whatever the checkpoint's
    num_frames: the library builds the model from the config with vision_config.num_frames=1, and the
    checkpoint's weights are loaded into it (strictly), the video encoder's per-frame position embedding
    cut to the first frame's."""
    from transformers import XCLIPModel

    loaded = XCLIPModel.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    config = copy.deepcopy(loaded.config)
    config.vision_config.num_frames = 1
    model = XCLIPModel(config)
    state = loaded.state_dict()
    state["mit.position_embedding"] = state["mit.position_embedding"][:, :1]
    model.load_state_dict(state)
    return model.eval()


class XClipBackbone(HFClipBackbone):
    """xclip: every image or frame is a one-frame video of X-CLIP's video encoder (its vision tower, then the
    multi-frame integration transformer over that one frame)."""

    visual_prefixes = HFClipBackbone.visual_prefixes + ("model.mit.",)
    load = staticmethod(one_frame_xclip)

    def __init__(self, spec):
        super().__init__(spec)
        # The video-specific prompt generator conditions text on a video inside XCLIPModel.forward only;
        # get_text_features and get_video_features never run it, and DDP requires every trained parameter to be used.
        for unused in (self.model.prompts_generator, self.model.prompts_visual_layernorm,
                       self.model.prompts_visual_projection):
            unused.requires_grad_(False)

    def encode_frames(self, images):
        """images [N,3,H,W] -> (get_video_features of N one-frame videos [N, embed_dim], vision tokens after
        post_layernorm [N, 1+P, width])."""
        out = self.model.get_video_features(pixel_values=images.unsqueeze(1))
        return out.pooler_output, self.model.vision_model.post_layernorm(out.last_hidden_state)


def read_cyclip_state_dict(path):
    """The OpenAI-CLIP state dict of a CyCLIP checkpoint ({"state_dict": {"module.<name>": tensor}, ...}) or of
    a bare state dict, without DDP's `module.` prefix."""
    setting = "model.backbone.pretrained"
    ckpt = read_torch_file(path, "a CyCLIP checkpoint ({'epoch', 'name', 'state_dict', 'optimizer'})", setting)
    state = state_dict_of(ckpt, ("state_dict",))
    if not state:
        raise ValueError(f"{setting}={path}: expected a CyCLIP checkpoint ({{'state_dict': {{name: tensor}}}}) or a "
                         "bare state dict")
    if "text_projection" not in state or not ({"visual.proj", "visual.attnpool.c_proj.weight"} & set(state)):
        raise ValueError(f"{setting}={path}: not an OpenAI-CLIP state dict (no text_projection, or neither "
                         "visual.proj (ViT) nor visual.attnpool (ResNet)); expected a CyCLIP checkpoint")
    return state


class CyClipBackbone(EnglishBackbone):
    """cyclip: open_clip's CLIP (ResNet or ViT image tower) built from a CyCLIP checkpoint."""

    visual_prefixes = ("model.visual.",)
    text_prefixes = ("model.transformer.", "model.token_embedding.", "model.positional_embedding",
                     "model.ln_final.", "model.text_projection")

    def __init__(self, spec):
        super().__init__(spec)
        from open_clip.model import build_model_from_openai_state_dict
        from open_clip.modified_resnet import ModifiedResNet

        state = read_cyclip_state_dict(spec.pretrained)
        try:
            # infers the architecture from the tensors; it builds in float16 and loads a copy there ...
            self.model = build_model_from_openai_state_dict(state)
            # ... so the weights are loaded again once the model is float32, at the checkpoint's precision
            self.model.float().load_state_dict(state)
        except (KeyError, AssertionError, RuntimeError) as e:
            raise ValueError(f"model.backbone.pretrained={spec.pretrained}: open_clip cannot build an OpenAI-CLIP "
                             f"model from this state dict ({type(e).__name__}: {e})") from None
        self.resnet = isinstance(self.model.visual, ModifiedResNet)
        # non-reentrant in open_clip's transformers; open_clip has no checkpointing for a ResNet tower (a no-op there)
        self.model.set_grad_checkpointing(bool(spec.grad_checkpointing))
        self._finish(spec.freeze)

    @property
    def vision_width(self):
        visual = self.model.visual
        return visual.attnpool.k_proj.in_features if self.resnet else visual.conv1.out_channels

    @property
    def num_patches(self):
        visual = self.model.visual
        if self.resnet:
            return visual.attnpool.positional_embedding.shape[0] - 1
        return visual.grid_size[0] * visual.grid_size[1]

    @property
    def image_size(self):
        size = self.model.visual.image_size
        return size if isinstance(size, int) else size[0]

    @property
    def text_width(self):
        return self.model.transformer.width

    @property
    def vocab_size(self):
        return self.model.vocab_size

    @property
    def context_length(self):
        return self.model.context_length

    @property
    def embed_dim(self):
        return self.model.text_projection.shape[1]

    def encode_frames(self, images):
        """images [N,3,H,W] -> (encode_image [N, embed_dim], tokens [N, 1+P, width]): ViT: [CLS] and patches after
        ln_post; ResNet: the last stage's feature map (before attention pooling) with its mean first."""
        out = self.model.forward_intermediates(
            image=images, image_indices=1, normalize=False, normalize_intermediates=True,
            image_output_fmt="NCHW" if self.resnet else "NLC", image_output_extra_tokens=True)
        last = out["image_intermediates"][0]
        if self.resnet:
            patches = last.flatten(2).transpose(1, 2)
            tokens = torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1)
        else:
            tokens = torch.cat([out["image_intermediates_prefix"][0], last], dim=1)
        return out["image_features"], tokens

    def encode_text(self, input_ids, attention_mask, keep_layer=None):
        """-> (encode_text [B, embed_dim], last hidden states after ln_final [B, L, text_width], None).
        `attention_mask` is not needed: the tower is causal and pools at the end token (the largest id)."""
        self._no_kept_state(keep_layer)
        length = input_ids.shape[1]
        # open_clip's text tower adds all context_length position embeddings, so the ids are padded to it (with
        # 0, as its tokenizer does); causal attention leaves the first `length` positions as they are.
        ids = F.pad(input_ids, (0, self.context_length - length))
        out = self.model.forward_intermediates(text=ids, text_indices=1, normalize=False, normalize_intermediates=True)
        return out["text_features"], out["text_intermediates"][0][:, :length], None
