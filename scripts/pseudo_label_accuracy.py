"""How often EPL's level-3 pseudo-label (Eq. 1) names an item's true level-3 entity, on the mini dataset.

    python scripts/pseudo_label_accuracy.py --config configs/demo_pretrain.yaml [--checkpoint CKPT] [key=value ...]

The pseudo-label of an item is the argmax over the level-3 entities of the similarity between its
visual feature (the mean of its frames' projected [CLS]) and the text tower's embedding of each
entity's prompt. The items are the goods of the video2goods gallery and the videos of the
goods2video gallery, preprocessed as at test time; the truth is the generator's
entities/mini_item_level3.tsv, which only the mini dataset has. Prints one line per domain with
the accuracy and the chance level (1 / number of level-3 entities).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datasets import build_eval_dataset, collate_eval  # noqa: E402
from datasets.annotations import GALLERY_DOMAIN, DatasetPaths, read_entities  # noqa: E402
from models import build_pretrain_model  # noqa: E402
from scripts.make_mini_dataset import TRUTH_FILE  # noqa: E402
from utils.checkpoint import load_model_weights  # noqa: E402
from utils.config import load_config  # noqa: E402


def read_truth(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the item entities are known only for the generated mini dataset "
                                f"(scripts/make_mini_dataset.py)")
    truth = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise ValueError(f"{path}:{lineno}: expected domain<TAB>pid<TAB>entity")
            truth[(fields[0], int(fields[1]))] = fields[2]
    return truth


@torch.no_grad()
def accuracy(cfg, checkpoint=None, batch_size=64):
    """-> {domain: (accuracy, items)} and the chance level."""
    cfg["pretrain"]["stage"] = "joint"  # a model with the entity prompts of every level
    torch.manual_seed(cfg["seed"])
    model = build_pretrain_model(cfg).eval()
    if checkpoint:
        load_model_weights(model, checkpoint, strict=False)
    paths = DatasetPaths.from_config(cfg["data"])
    entities = read_entities(paths.entities_file(3))
    truth = read_truth(os.path.join(paths.entities_dir, TRUTH_FILE))
    prompts = torch.nn.functional.normalize(model.entity_embeddings()[2], dim=-1)
    results = {}
    for direction, domain in GALLERY_DOMAIN.items():
        dataset = build_eval_dataset(cfg, paths.gallery_list(direction), domain=domain)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_eval)
        right = total = 0
        for batch in loader:
            b, t = batch["frames"].shape[:2]
            visual = model.backbone.encode_frames(batch["frames"].flatten(0, 1))[0].view(b, t, -1).mean(dim=1)
            predicted = (torch.nn.functional.normalize(visual, dim=-1) @ prompts.t()).argmax(dim=1)
            for pid, k in zip(batch["pid"].tolist(), predicted.tolist()):
                right += entities[k] == truth[(domain, pid)]
                total += 1
        results[domain] = (right / total, total)
    return results, 1 / len(entities)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", help="pre-training checkpoint (default: the config's initial weights)")
    parser.add_argument("--name", default="", help="label printed with the result")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    results, chance = accuracy(load_config(args.config, args.overrides), args.checkpoint)
    for domain, (acc, n) in results.items():
        print(f"level-3 pseudo-label accuracy {args.name}: {domain} {100 * acc:.1f} % of {n} items "
              f"(chance {100 * chance:.1f} %)")


if __name__ == "__main__":
    main()
