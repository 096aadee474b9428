"""Clean/corrupt pairs of exactly T tokens: the 10-token Eiffel/Colosseum pair behind a neutral preamble."""

from __future__ import annotations

CLEAN = "The Eiffel Tower is located in the city of"
CORRUPT = "The Colosseum is located in the city of"
TARGET, FOIL = " Paris", " Rome"

_FILLER = (
    "Travel notes from a long journey across Europe. We walked for many days along rivers and old roads, "
    "stopped in small villages, ate bread and cheese in the markets, talked with farmers about the weather, "
    "visited churches, bridges, gardens and museums, and wrote down the names of every place we saw. "
    "Some evenings we read books by the fire, other evenings we sang songs with strangers in the inns. "
) * 8


def pair(model, n_tokens: int) -> tuple[str, str]:
    """(clean, corrupt) of exactly `n_tokens` tokens each for this model's tokenizer."""
    if model.to_tokens(CLEAN).shape[1] == n_tokens and model.to_tokens(CORRUPT).shape[1] == n_tokens:
        return CLEAN, CORRUPT
    ids = model.tokenizer(_FILLER, add_special_tokens=False).input_ids
    base = model.to_tokens(CLEAN).shape[1]
    for n in range(max(0, n_tokens - base - 4), n_tokens - base + 5):
        prefix = model.tokenizer.decode(ids[:n]).rstrip() + " "
        clean, corrupt = prefix + CLEAN, prefix + CORRUPT
        if model.to_tokens(clean).shape[1] == n_tokens and model.to_tokens(corrupt).shape[1] == n_tokens:
            return clean, corrupt
    raise ValueError(f"could not build a {n_tokens}-token pair")
