"""Build a tiny BERT and a WordPiece tokenizer from local text: no downloads.

    python -m mtld.train.tinymodel OUT_DIR DATA_FILE... [--layers 2 --hidden 64]

The demo and the tests use it; the result loads through the same
`AutoModel` / `AutoTokenizer` code as any real checkpoint.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path

from mtld.config.taskrows import read_rows

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def texts_from_files(paths: Iterable[Path]) -> Iterator[str]:
    """Every string value in the rows of the data files (words of token lists joined)."""
    for path in paths:
        for _, row in read_rows(Path(path)):
            for value in row.values():
                if isinstance(value, str):
                    yield value
                elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                    yield " ".join(value)


def build_tiny_model(
    out_dir: Path,
    texts: Iterable[str],
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 2,
    intermediate: int | None = None,
    vocab_size: int = 3000,
    max_position: int = 512,
    seed: int = 0,
) -> Path:
    """Train a WordPiece tokenizer on `texts`, build a random BERT, save both."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # strip_accents=False: accent stripping decomposes kana and drops dakuten (が -> か).
    wordpiece = BertWordPieceTokenizer(lowercase=True, strip_accents=False, handle_chinese_chars=True)
    wordpiece.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIAL_TOKENS)
    tokenizer = BertTokenizerFast(
        tokenizer_object=wordpiece._tokenizer,
        do_lower_case=True,
        strip_accents=False,
        tokenize_chinese_chars=True,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=max_position,
    )
    tokenizer.save_pretrained(out_dir)

    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate or 4 * hidden,
        max_position_embeddings=max_position,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("data", type=Path, nargs="+", help="JSONL/CSV files whose text trains the tokenizer")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=3000)
    args = parser.parse_args(argv)
    build_tiny_model(
        args.out_dir, texts_from_files(args.data), layers=args.layers, hidden=args.hidden, heads=args.heads, vocab_size=args.vocab_size
    )
    print(args.out_dir)


if __name__ == "__main__":
    main()
