"""The text side of the miniature Stable Diffusion: captions of the built-in shapes and a CLIP
tokenizer learnt from them.

Stable Diffusion reads captions through CLIP's byte-level BPE tokenizer (49,408 tokens learnt from
web text). The miniature's captions use 33 words, so its tokenizer is learnt here, the same way
(Sennrich et al.'s byte-pair merges over characters, words ending in </w>), and written as the
vocab.json + merges.txt that transformers' stock CLIPTokenizer loads: every caption word is one
token, and any other text still tokenizes, character by character.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..training.data import BUILTIN_CLASSES, ImageSet, to_float

# ------------------------------------------------------------------------------------ captions

# The words for data.py's classes (BUILTIN_CLASSES, BUILTIN_COLOURS), in its order.
COLOUR_WORDS = ("red", "blue", "green", "yellow", "purple", "cyan", "orange", "pink", "silver", "lime")
SHAPE_WORDS = ("disc", "square", "triangle", "ring", "cross", "diamond", "striped square", "pair of bars",
               "checkerboard", "pair of dots")
# Five equal bins of the image's mean brightness, which data.py draws uniform on [-0.9, 0.9].
BACKGROUND_WORDS = ("nearly black", "dark grey", "mid grey", "light grey", "nearly white")
BACKGROUND_EDGES = (-0.54, -0.18, 0.18, 0.54)
MAX_TOKENS = 16  # the longest caption is 12 tokens with <|startoftext|> and <|endoftext|>


def background_word(brightness: float) -> str:
    """"nearly black" ... "nearly white" for a mean brightness in [-1, 1]."""
    return BACKGROUND_WORDS[sum(brightness >= edge for edge in BACKGROUND_EDGES)]


def caption(label: int, brightness: float) -> str:
    """The caption of a built-in image: "a red disc on a nearly black background"."""
    colour = COLOUR_WORDS[label]
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {SHAPE_WORDS[label]} on a {background_word(brightness)} background"


def captions_of(data: ImageSet) -> list[str]:
    """One caption per image, from its class and its measured mean brightness."""
    brightness = to_float(data.images).mean((1, 2, 3))
    return [caption(label, b) for label, b in zip(data.labels.tolist(), brightness.tolist())]


def all_captions() -> list[str]:
    """Every caption the built-in set can have (10 classes x 5 backgrounds)."""
    mids = [-0.72, -0.36, 0.0, 0.36, 0.72]
    return [caption(label, b) for label in range(len(BUILTIN_CLASSES)) for b in mids]


# ----------------------------------------------------------------------------------- tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte-level alphabet: each of the 256 bytes as a printable character."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return dict(zip(range(256), chars))


def learn_bpe(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair encoding (Sennrich et al. 2016) as CLIP learnt it, on our caption words: start
    from characters (the last one marked </w>), merge the most frequent adjacent pair, repeat
    until every word is a single token. Ties go to the alphabetically first pair, so it is
    deterministic. Returns the merges in order: the tokenizer replays them in that order."""
    counts = Counter(words)
    spelled = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in counts}
    merges = []
    while True:
        pairs = Counter()
        for w, symbols in spelled.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += counts[w]
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, symbols in spelled.items():
            out, i = [], 0
            while i < len(symbols):
                if symbols[i:i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            spelled[w] = tuple(out)


def write_tokenizer(folder: Path, captions: list[str]):
    """A CLIP tokenizer (vocab.json + merges.txt) whose BPE is learnt from `captions`: the 512
    byte-level characters (with and without </w>) as in CLIP, so any text tokenizes, then one
    token per merge, then <|startoftext|> and <|endoftext|> last, as in CLIP's own vocabulary."""
    from transformers import CLIPTokenizer

    alphabet = list(bytes_to_unicode().values())
    vocab = {ch: i for i, ch in enumerate(alphabet + [ch + "</w>" for ch in alphabet])}
    merges = learn_bpe([w for text in captions for w in text.lower().split()])
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS)
    tokenizer.save_pretrained(folder)
    return tokenizer
