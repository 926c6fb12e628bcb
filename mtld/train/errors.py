"""Errors that mean "the job cannot run as written": exit status 2, retrying will not help."""

from __future__ import annotations

# Packages some tokenizers import lazily, and how to get them.
PACKAGE_HINTS = {
    "fugashi": "pip install 'mtld[ja]'",
    "unidic_lite": "pip install 'mtld[ja]'",
    "unidic-lite": "pip install 'mtld[ja]'",
    "ipadic": "pip install 'mtld[ja]'",
    "sudachipy": "pip install sudachipy sudachidict_core",
    "rhoknp": "pip install rhoknp",
    "sentencepiece": "pip install sentencepiece",
    "protobuf": "pip install protobuf",
    "tiktoken": "pip install tiktoken",
}


class BadInput(Exception):
    """The job, its data or its model cannot be used. The message is for a person."""


def missing_package_message(exc: ImportError, what: str) -> str:
    """Name the missing package and how to install it (Japanese BERTs: the mtld[ja] extra)."""
    text = f"{exc.name or ''} {exc}"
    for package, hint in PACKAGE_HINTS.items():
        if package in text:
            return f"{what} needs the package {package!r}, which is not installed: {hint}"
    name = exc.name or "a package"
    return f"{what} needs {name}, which is not installed ({exc})"
