"""Constants and builders shared by the test modules (imported as `tests.helpers`); the fixtures that
use them are in conftest.py."""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a small dataset: a couple of seconds to generate, enough items for loaders and recall
MINI_SIZES = dict(num_queries=40, num_test_queries=12, gallery_size=60, image_size=32, num_raw_videos=8)

# overrides that shrink any config's model to a few layers of width 64 (the switches stay the config's)
TINY = [
    "data.image_size=32", "data.num_frames=3", "data.query_max_len=8", "data.text_max_len=12", "model.embed_dim=32",
    "model.backbone.overrides={vision_width: 64, vision_layers: 2, vision_patch_size: 8, vision_head_width: 32, "
    "text_hidden_size: 64, text_num_hidden_layers: 4, text_num_attention_heads: 2, text_intermediate_size: 128}",
    "model.video.ftt_heads=2", "model.fusion.num_layers=2", "model.recon.text_heads=2", "model.recon.vision_heads=2",
]


def _flow(mapping):
    """A dict as a YAML flow mapping for a key=value override."""
    return "{" + ", ".join(f"{k}: {_flow(v) if isinstance(v, dict) else v}" for k, v in mapping.items()) + "}"


# COPE (model.family=cope) at the sizes of TINY: its X-CLIP and RBT3 towers shrunk, random weights
XCLIP_TINY = {"projection_dim": 32, "prompt_layers": 1, "prompt_num_attention_heads": 2,
              "text_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                              "num_attention_heads": 2},
              "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "num_frames": 4,
                                "mit_hidden_size": 32, "mit_intermediate_size": 64, "mit_num_hidden_layers": 1,
                                "mit_num_attention_heads": 2}}
TEXT_TINY = {"text_hidden_size": 32, "text_num_hidden_layers": 2, "text_num_attention_heads": 2,
             "text_intermediate_size": 64}
COPE_TINY = ["data.image_size=32", "data.num_frames=3", "data.query_max_len=8", "data.text_max_len=12",
             "model.embed_dim=32", "model.cope.fusion_heads=2", "model.cope.text_pretrained=null",
             f"model.cope.text_overrides={_flow(TEXT_TINY)}", f"model.cope.xclip_overrides={_flow(XCLIP_TINY)}",
             "loss.cope.num_classes=50"]

# ----------------------------------------------------------------------------- backbone families (Table 2)
# Tiny random models of the English-text families of models.families, each saved in its family's release
# format: image size 32, projection 64, text context 32 (data.query_max_len 12 and text_max_len 24 fit).

FAMILY_EMBED_DIM = 64
FAMILY_CONTEXT_LENGTH = 32
# FashionCLIP's folder gets pixel statistics other than CLIP's, so that image_stats is seen to read them
FASHION_STATS = {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}


def family_cfg(family, path, *overrides):
    """configs/demo.yaml (data.image_size 32, query_max_len 12, text_max_len 24) on model.family=`family` with
    the weights at `path` (a `family_weights` model; None: random chinese_clip), additive fusion."""
    from utils.config import load_config

    pretrained = "null" if path is None else path
    return load_config(os.path.join(REPO_ROOT, "configs", "demo.yaml"), [
        f"model.family={family}", f"model.backbone.pretrained={pretrained}", f"model.embed_dim={FAMILY_EMBED_DIM}",
        "model.fusion.type=add", *overrides])


def tiny_clip_tokenizer():
    """A CLIPTokenizer built offline: the 256 byte-level characters and their </w> forms, no merges, then
    <|startoftext|> and <|endoftext|> as the last two ids, as in CLIP's vocabulary."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def _hf_configs(tokenizer, legacy_eos):
    """Text and vision configs; legacy_eos: eos_token_id=2 as in OpenAI's configs on the hub, which makes
    CLIPTextModel pool at the largest id instead of at the first end token."""
    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=FAMILY_CONTEXT_LENGTH)
    if legacy_eos:
        text.update(bos_token_id=0, eos_token_id=2, pad_token_id=1)
    else:
        text.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    return text, vision


def save_cyclip_checkpoint(path, vit=False):
    """A tiny OpenAI-layout CLIP (ResNet of width 8, or a ViT of width 64) saved as CyCLIP's training script
    saves its checkpoints: {"epoch", "name", "state_dict" with DDP's `module.` prefix, "optimizer"}."""
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    if vit:
        vision = CLIPVisionCfg(layers=2, width=64, patch_size=8, image_size=32)
    else:
        vision = CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, image_size=32)
    # open_clip's tokenizer is the real one: the full 49408-token vocabulary; heads = width // 64 as OpenAI's
    text = CLIPTextCfg(context_length=FAMILY_CONTEXT_LENGTH, vocab_size=49408, width=64, heads=1, layers=1)
    model = CLIP(FAMILY_EMBED_DIM, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    optimizer = torch.optim.AdamW(model.parameters())
    torch.save({"epoch": 1, "name": "tiny", "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict()}, path)
    return path


def save_family(family, folder):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, XCLIPConfig, XCLIPModel

    with torch.random.fork_rng():
        torch.manual_seed(sum(map(ord, family)))
        if family == "cyclip":
            return save_cyclip_checkpoint(str(folder / "cyclip_tiny.pt"))
        tokenizer = tiny_clip_tokenizer()
        text, vision = _hf_configs(tokenizer, legacy_eos=family == "clip")
        if family == "xclip":
            # num_frames stays the release's 8: the backbone must run one-frame videos all the same
            vision.update(mit_hidden_size=64, mit_intermediate_size=128, mit_num_hidden_layers=1,
                          mit_num_attention_heads=2)
            model = XCLIPModel(XCLIPConfig(text_config=text, vision_config=vision, projection_dim=FAMILY_EMBED_DIM,
                                           prompt_layers=1, prompt_num_attention_heads=2))
        else:
            model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=FAMILY_EMBED_DIM))
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        if family == "fashionclip":
            CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32, **FASHION_STATS).save_pretrained(str(folder))
    return str(folder)
