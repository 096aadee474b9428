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
