"""Character-level tokenizer of the built-in tiny model.

One token per character, built locally with the `tokenizers` library and saved as an
ordinary Hugging Face tokenizer directory, so that transformers' AutoTokenizer and vLLM
load it without network access.

The vocabulary is all of printable ASCII plus newline rather than only the characters
of the addition task: JSONL tasks and the forced-interruption text can use any of them,
and the whole alphabet costs 12k embedding parameters. Anything else maps to <unk>.
"""

from __future__ import annotations

import functools
import json
import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, processors

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
# string.printable minus the whitespace we have no use for (\t \r \x0b \x0c); keeps " " and "\n".
CHARACTERS = tuple(c for c in string.printable if c not in "\t\r\x0b\x0c")
VOCAB = SPECIAL_TOKENS + CHARACTERS
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
MODEL_MAX_LENGTH = 512


def build_char_tokenizer() -> Tokenizer:
    """A tokenizer that maps each character to one id and prepends <bos>.

    A BPE model with no merges and no pre-tokenizer splits text into single characters
    and keeps spaces and newlines as tokens; the Fuse decoder joins them back unchanged.
    """
    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.decoder = decoders.Fuse()
    # <bos> comes from the tokenizer itself so that every engine that calls
    # encode(prompt) with special tokens on (vLLM, transformers) sees the same ids.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, BOS_ID)]
    )
    return tok


def save_char_tokenizer(directory: str | Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_char_tokenizer().save(str(directory / "tokenizer.json"))
    specials = {"pad_token": PAD, "bos_token": BOS, "eos_token": EOS, "unk_token": UNK}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": MODEL_MAX_LENGTH,
        # The default clean-up would delete the space in "1 ," and similar: decoding must be exact.
        "clean_up_tokenization_spaces": False,
        **specials,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


@functools.lru_cache(maxsize=1)
def _shared_tokenizer() -> Tokenizer:
    return build_char_tokenizer()


def encode(text: str) -> list[int]:
    """Ids of `text` without <bos>; for callers that assemble sequences themselves."""
    return _shared_tokenizer().encode(text, add_special_tokens=False).ids


def decode(ids: list[int]) -> str:
    """Text of `ids`, special tokens dropped."""
    return _shared_tokenizer().decode(ids, skip_special_tokens=True)


def load_tokenizer(path: str | Path):
    """The directory's tokenizer, as the class its tokenizer_config.json names when that is the generic one.

    transformers 5 otherwise picks the class from the model type (Qwen2Tokenizer for the tiny model), whose
    byte-level pre-tokenizer silently drops the character tokenizer's spaces.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    config = path / "tokenizer_config.json"
    declared = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
    cls = PreTrainedTokenizerFast if declared == "PreTrainedTokenizerFast" else AutoTokenizer
    return cls.from_pretrained(path, local_files_only=True)
