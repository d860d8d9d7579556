"""Training data: record sources and validation (:mod:`.records`), the built-in arithmetic
generator (:mod:`.builtin`) and tokenisation (:mod:`.tokenize`)."""

from .builtin import builtin_arithmetic, builtin_split
from .records import (
    REQUIRED_FIELDS,
    check_fields,
    gsm8k_record,
    hash_half,
    load_json_records,
    load_training_records,
    normalise_text,
    parse_source,
    select_records,
)
from .tokenize import Tokenized, pack_rows, split_validation, tokenize_record, tokenize_records

__all__ = ["REQUIRED_FIELDS", "Tokenized", "builtin_arithmetic", "builtin_split", "check_fields", "gsm8k_record",
           "hash_half", "load_json_records", "load_training_records", "normalise_text", "parse_source",
           "pack_rows", "select_records", "split_validation", "tokenize_record", "tokenize_records"]
