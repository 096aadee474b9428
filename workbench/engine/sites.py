"""The Site table: one record per site name, answering everything a layer needs to know about a site.

A site is a kind of activation that exists once per layer (`embed` only at layer 0): which module carries it
(through `Arch`), whether it is that module's input or output, whether it splits into heads (query heads or
key-value heads), where it comes in the forward order of a block, and how the replay engine enters it.
No module outside this one compares site names.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SiteError


@dataclass(frozen=True)
class Site:
    """What one site is; `Model.site_ref` resolves it to a module for one family and layer."""

    name: str
    doc: str
    order: int  # forward order inside one block (embed first): traces visit sites in this order
    heads: str | None = None  # None, "query" (n_heads), or "kv" (n_kv_heads): the site splits into heads
    needs_head: bool = False  # a Cell of this site must name a head (head, q, k, v, pattern)
    embed_only: bool = False  # exists only at layer 0 (the token embeddings)
    after_block: bool = False  # the value is a term of the block's output (mlp_out, resid_post)
    sequential_only: bool = False  # undefined for blocks whose attention and MLP read the same input
    pattern: bool = False  # attention probabilities [T_q, T_k] per head, not a hidden vector
    # how the replay engine edits it: "stream" (the hidden state between blocks), "added" (a term added to
    # the stream after the block), "hook" (a module tensor inside the block), "" (not replayed: the trace does)
    replay: str = ""
    sender: bool = False  # path patching: its output can be the sender (attention heads)
    receiver: bool = False  # path patching: it can receive (a head's query, key, value, or all three)

    @property
    def per_head(self) -> bool:
        return self.heads is not None


SITE_TABLE: dict[str, Site] = {
    s.name: s
    for s in (
        Site(
            "embed", "the token embeddings (the embedding module's output), layer 0 only", 0, embed_only=True
        ),
        Site("resid_pre", "the residual stream entering block l", 1, replay="stream"),
        Site(
            "q",
            "one head's query: its slice of the query projection output (before rotary)",
            2,
            heads="query",
            needs_head=True,
            replay="hook",
            receiver=True,
        ),
        Site(
            "k",
            "one key-value head's key: its slice of the key projection output (before rotary)",
            3,
            heads="kv",
            needs_head=True,
            replay="hook",
            receiver=True,
        ),
        Site(
            "v",
            "one key-value head's value: its slice of the value projection output",
            4,
            heads="kv",
            needs_head=True,
            replay="hook",
            receiver=True,
        ),
        Site(
            "pattern",
            "one head's attention probabilities [T_q, T_k]",
            5,
            heads="query",
            needs_head=True,
            pattern=True,
        ),
        Site(
            "head",
            "one head's output: its slice of the attention output projection's input",
            6,
            heads="query",
            needs_head=True,
            replay="hook",
            sender=True,
            receiver=True,
        ),
        Site("attn_out", "what the attention sub-block adds to the residual stream", 7, replay="hook"),
        Site(
            "resid_mid",
            "the residual stream between the attention and MLP sub-blocks",
            8,
            sequential_only=True,
            replay="hook",
        ),
        Site(
            "mlp_out",
            "what the MLP sub-block adds to the residual stream",
            9,
            after_block=True,
            replay="added",
        ),
        Site("resid_post", "the residual stream leaving block l", 10, after_block=True, replay="stream"),
    )
}

SITES: tuple[str, ...] = tuple(SITE_TABLE)


def site(name: object) -> Site:
    """The record of a site name, or an error listing the sites."""
    if isinstance(name, Site):
        return name
    if not isinstance(name, str) or name not in SITE_TABLE:
        listing = "; ".join(f"{s.name} ({s.doc})" for s in SITE_TABLE.values())
        raise SiteError(f"Unknown site {name!r}. Sites: {listing}.")
    return SITE_TABLE[name]
