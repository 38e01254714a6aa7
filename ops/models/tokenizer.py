"""A CLIP-compatible BPE tokenizer trained offline on the prompt vocabulary.

The offline presets cannot download CLIP's 49k-token vocabulary, so a byte-level BPE is trained
here with CLIP's own text pipeline (NFC, whitespace squeeze, lowercase, CLIP's split regex,
GPT-2 byte-to-unicode map, ``</w>`` end-of-word suffix) and written in CLIP's file format
(``vocab.json`` + ``merges.txt``, specials ``<|startoftext|>``/``<|endoftext|>``). Stock
``transformers.CLIPTokenizer`` and therefore ``StableDiffusionPipeline`` load it unchanged.

The vocabulary is laid out as CLIP's: the 256 byte symbols, the same with ``</w>``, one token
per learned merge, then the two specials. Keeping every byte symbol means any prompt, even one
with words never seen in training, tokenizes without unknown tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
END_OF_WORD = "</w>"
# CLIP's pre-tokenizer split (openai/CLIP simple_tokenizer.py).
CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
    r"""[^\s\p{L}\p{N}]+"""
)
BYTE_SYMBOLS = 256
# byte symbols, the same with </w>, and the two specials
MIN_VOCAB_SIZE = 2 * BYTE_SYMBOLS + 2


def byte_symbols() -> list[str]:
    """GPT-2/CLIP ``bytes_to_unicode`` values in CLIP's vocabulary order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _clip_pipeline_tokenizer() -> Tokenizer:
    """An untrained tokenizer with CLIP's normalizer and pre-tokenizer (as CLIPTokenizer's)."""
    tok = Tokenizer(models.BPE(unk_token=EOS, end_of_word_suffix=END_OF_WORD))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    return tok


def train_clip_bpe(texts: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[str]]:
    """Learn BPE merges on ``texts``; return CLIP-ordered ``(vocab, merges)``.

    ``vocab_size`` counts the 514 byte/special symbols, so it must be larger than that; training
    stops earlier when every word of the corpus is one token.
    """
    if vocab_size <= MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must exceed {MIN_VOCAB_SIZE} (byte symbols + specials)")
    tok = _clip_pipeline_tokenizer()
    trainer = trainers.BpeTrainer(
        # the trainer's own count includes the alphabet once (without </w> variants)
        vocab_size=vocab_size - BYTE_SYMBOLS - 2,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix=END_OF_WORD,
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    learned = json.loads(tok.to_str())["model"]["merges"]
    symbols = byte_symbols()
    tokens = symbols + [s + END_OF_WORD for s in symbols]
    seen = set(tokens)
    merges: list[str] = []
    for left, right in learned:
        merged = left + right
        if merged in seen or len(tokens) >= vocab_size - 2:
            continue
        merges.append(f"{left} {right}")
        tokens.append(merged)
        seen.add(merged)
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_vocab(directory: Path, vocab: dict[str, int], merges: list[str]) -> None:
    """Write ``vocab.json`` and ``merges.txt`` exactly as CLIP's tokenizer files are laid out."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def train_clip_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int, directory: Path):
    """Train, write and reload a ``CLIPTokenizer`` with ``model_max_length=max_length``.

    The files are written first and loaded back through ``CLIPTokenizer``, so what is returned
    is exactly what a later ``from_pretrained`` of the saved directory gives.
    """
    from transformers import CLIPTokenizer

    vocab, merges = train_clip_bpe(texts, vocab_size)
    write_clip_vocab(directory, vocab, merges)
    tokenizer = CLIPTokenizer(
        vocab=str(directory / "vocab.json"),
        merges=str(directory / "merges.txt"),
        model_max_length=max_length,
    )
    tokenizer.save_pretrained(directory)
    return CLIPTokenizer.from_pretrained(directory)
