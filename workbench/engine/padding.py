"""Examples of different lengths in one forward pass: left padding with an explicit attention mask and
explicit position ids, so every example sees exactly the positions it would see alone (no silent shift:
nnsight issue #672 is the bug this avoids)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Padded:
    """A left-padded batch: `input_ids`/`attention_mask`/`position_ids` [B, T_max]; `pad[i]` is how many
    pad slots precede example i, so its position p sits at column pad[i] + p."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    pad: list[int]

    def inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }


def left_pad(ids: Sequence[torch.Tensor], pad_id: int) -> Padded:
    """Stack token id rows ([1, T_i] or [T_i] each) into one left-padded batch."""
    rows = [t.reshape(-1) for t in ids]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    pad = []
    for i, r in enumerate(rows):
        p = width - len(r)
        input_ids[i, p:] = r
        mask[i, p:] = 1
        positions[i, p:] = torch.arange(len(r))
        pad.append(p)
    return Padded(input_ids, mask, positions, pad)


def pad_id(tokenizer: object) -> int:
    """The tokenizer's pad id, else its EOS id, else 0 (masked out either way)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


# Pure torch functions for trace bodies (shipped to NDIF by value, like `kernels`): one example's share of a
# left-padded batch, in the coordinates it has alone (row 0 its source run, row 1 its base run, position 0
# its first real token), so the single-example kernels apply to it unchanged.


def example_view(x: torch.Tensor, start: int, stop: int, pad: int) -> torch.Tensor:
    """Rows start..stop of a [B, T, ...] module tensor without their `pad` leading pad slots: a view (edits go
    through to `x`)."""
    return x[start:stop, pad:]


def example_attention_inputs(
    inputs: tuple[tuple, dict], start: int, stop: int, pad: int
) -> tuple[tuple, dict]:
    """The inputs of an attention function (module, query, key, value [B, H, T, d], mask [B | 1, 1, T, T], ...)
    cut to one example's rows and real positions, as that example alone would pass them."""
    args, kwargs = inputs
    module, query, key, value, mask = args[:5]
    if mask is not None:
        rows = slice(start, stop) if mask.shape[0] > 1 else slice(None)
        mask = mask[rows, :, pad:, pad:]
    cut = (query[start:stop, :, pad:], key[start:stop, :, pad:], value[start:stop, :, pad:])
    return (module, *cut, mask, *args[5:]), kwargs
