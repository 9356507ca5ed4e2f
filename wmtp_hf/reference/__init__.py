"""Reference models for the Rho-1 stage (docs/design.md §4.4): fingerprints, loading, and cached per-token losses.

Rho-1 weights tokens by the excess loss `CE_policy − CE_ref`, where `CE_ref(j) = -log p_ref(x_j | x_<j)`
comes from a frozen reference causal LM. The reference losses depend only on the tokens and the
reference, so, like TRL's `precompute_ref_log_probs`, they can be computed once and stored as a
`ref_token_losses` column: `add_reference_losses` rewrites a prepared dataset folder with the column
(`python -m wmtp_hf.data reference-losses`), `precompute_reference_losses` caches it at the start of
training. A fingerprint of the reference model and its tokenizer is stored with the column, and training
refuses a column whose fingerprint differs from the configured reference (`check_cached_fingerprint`).

One job per file: `fingerprints` (model, tokenizer and the same-tokenizer check), `models` (loading,
through `wmtp_hf.loading`), `columns` (the loss column of a dataset), `prepared` (prepared dataset
folders), `precompute` (the cache at training).
"""

from ..loading import default_device
from .columns import REFERENCE_COLUMN, compute_reference_column, dataset_fingerprint
from .fingerprints import (
    check_same_tokenizer,
    model_fingerprint,
    reference_fingerprint,
    tokenizer_fingerprint,
)
from .models import load_reference_model, load_reference_tokenizer
from .precompute import precompute_reference_losses
from .prepared import add_reference_losses, check_cached_fingerprint, read_reference_cache

__all__ = [
    "REFERENCE_COLUMN",
    "add_reference_losses",
    "check_cached_fingerprint",
    "check_same_tokenizer",
    "compute_reference_column",
    "dataset_fingerprint",
    "default_device",
    "load_reference_model",
    "load_reference_tokenizer",
    "model_fingerprint",
    "precompute_reference_losses",
    "read_reference_cache",
    "reference_fingerprint",
    "tokenizer_fingerprint",
]
