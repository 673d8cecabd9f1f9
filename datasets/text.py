"""The text each item feeds to the model, and its training-time augmentations (docs/DATA_FORMAT.md).

Every random choice takes an explicit `random.Random`, so that a sample's text depends only on
the seed the caller derives for that sample (same result in any worker, after a resume).
"""

VIDEO_TEXT_MAX_CHARS = 80
VIDEO_BODY_MAX_CHARS = 40  # the `text` field's share of the video text
TITLE_AUG_MIN_CHARS = 10
TITLE_AUG_RATE = 0.2       # share of character positions edited by the title augmentation
# the fields of a parsed text file that goods_title / video_text read
ITEM_TEXT_FIELDS = {"goods": ("title",), "video": ("title", "text", "caption")}


def goods_title(fields):
    """The product text of a parsed goods text file (`read_goods_text`): its title."""
    return fields["title"]


def video_text(fields, rng=None, keep_prob=1.0):
    """`"|".join(parts)[:80]` of a parsed video text file (`read_video_text`, None = `null`).

    parts, in order: title; text[:40] when it differs from the title; caption. With `rng`
    (training), each present part is kept independently with probability `keep_prob`.
    """
    title, caption = fields["title"], fields["caption"]
    body = fields["text"][:VIDEO_BODY_MAX_CHARS] if fields["text"] is not None else None
    if body == title:
        body = None
    parts = [p for p in (title, body, caption) if p is not None]
    if rng is not None:
        parts = [p for p in parts if rng.random() < keep_prob]
    return "|".join(parts)[:VIDEO_TEXT_MAX_CHARS]


def augment_title(title, rng, prob):
    """Character noise on a product title: titles of >= 10 characters, with probability `prob`,
    get 20 % of their positions (drawn without replacement) doubled, dropped or followed by a
    space, one third each."""
    if len(title) < TITLE_AUG_MIN_CHARS or rng.random() >= prob:
        return title
    edits = {pos: rng.randrange(3) for pos in rng.sample(range(len(title)), int(TITLE_AUG_RATE * len(title)))}
    out = []
    for pos, ch in enumerate(title):
        op = edits.get(pos)
        if op is None:
            out.append(ch)
        elif op == 0:
            out.append(ch + ch)
        elif op == 2:
            out.append(ch + " ")
        # op == 1: the character is dropped
    return "".join(out)
