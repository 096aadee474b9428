"""Shared look of every figure: token display, text escaping, colour scales, sizes, titles, option checks."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import WorkbenchError

# ColorBrewer RdBu (reversed: positive = red) is diverging and colour-blind safe; Viridis is sequential,
# perceptually uniform and colour-blind safe. Both print legibly in greyscale.
DIVERGING = "RdBu_r"
SEQUENTIAL = "Viridis"
ATTENTION = "Blues"

FONT = "DejaVu Sans, Open Sans, Arial, sans-serif"  # DejaVu has the whitespace markers (␣ ↵ →)


_CONTROL = {i: chr(0x2400 + i) for i in range(32)} | {0x7F: "\u2421"}  # Unicode control pictures: ␀ .. ␟, ␡
_CONTROL.update({ord(" "): "\u2423", ord("\r"): "\u240d", ord("\n"): "\u21b5", ord("\t"): "\u2192"})
_CONTROL.update({i: f"\\x{i:02x}" for i in range(0x80, 0xA0)})  # C1 controls


def visible_token(tok: str) -> str:
    """A token as the views show it: space -> ␣, newline -> ↵, tab -> →, CR -> ␍, empty -> ∅.

    The Python twin of `visibleToken` in js/src/tokens.ts; every figure label goes through it. Other
    control characters (which tiny or byte-level vocabularies produce, and which SVG/PDF cannot hold)
    become their Unicode control pictures (␀ .. ␟, ␡) or \\x80 .. \\x9f.
    """
    if tok == "":
        return "\u2205"
    return tok.translate(_CONTROL)


_TEXT = {k: v for k, v in _CONTROL.items() if k != ord(" ")}


def visible_text(text: str, keep_newlines: bool = False) -> str:
    """Running text (a prompt, a generation): control characters made visible, spaces kept."""
    table = {k: v for k, v in _TEXT.items() if k != ord("\n")} if keep_newlines else _TEXT
    return text.translate(table)


def escape(text: Any) -> str:
    """Make user or model text inert in plotly, which renders some HTML tags, entities and $TeX$ in text.

    '&', '<', '>' become entities (plotly shows them as the characters) and '$' becomes '&#36;' so that
    MathJax never typesets a prompt that contains two dollar signs.
    """
    s = str(text)
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("$", "&#36;")


def label(tok: str, limit: int | None = None) -> str:
    """Visible and escaped: the form of a token that goes into a figure (truncated to `limit` chars)."""
    vis = visible_token(tok)
    if limit is not None and len(vis) > limit:
        vis = vis[: limit - 1] + "\u2026"
    return escape(vis)


def prompt_text(prompt: Any, limit: int = 90) -> str:
    """A prompt for a title: newlines/tabs made visible, truncated, quoted and escaped."""
    if prompt is None:
        return ""
    s = visible_text(str(prompt))
    if len(s) > limit:
        s = s[: limit - 1] + "\u2026"
    return "\u201c" + escape(s) + "\u201d"


def fmt(v: float, digits: int = 3) -> str:
    v = float(v)
    if not np.isfinite(v):
        return "n/a" if np.isnan(v) else str(v)
    return f"{v:.{digits}g}"


def title_line(options: dict[str, Any], what: str | None = None, extra: str | None = None) -> str:
    """'<op> · site … · metric …' in bold, then the prompt(s) on further lines (all text escaped).

    `layout` shows the first line as the title and the others, smaller, as its subtitle.
    """
    parts = [f"<b>{escape(options.get('op', 'result'))}</b>"]
    for key in ("site", "method", "metric"):
        if options.get(key) is not None:
            parts.append(f"{key} {escape(options[key])}")
    if what:
        parts.append(escape(what))
    if extra:
        parts.append(extra)
    lines = [" \u00b7 ".join(parts)]
    if "clean" in options and "corrupt" in options:
        clean, corrupt = str(options["clean"]), str(options["corrupt"])
        if len(clean) + len(corrupt) > 70:
            subs = [f"clean {prompt_text(clean)}", f"corrupt {prompt_text(corrupt)}"]
        else:
            subs = [f"clean {prompt_text(clean)} \u00b7 corrupt {prompt_text(corrupt)}"]
    else:
        subs = [prompt_text(options.get("prompt"))] if options.get("prompt") is not None else []
    return "<br>".join(lines + subs)


def _plain(text: str) -> str:
    import html
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", text))


def title_size(title: str) -> tuple[int, int]:
    """(width in px, height in px) a title needs: 15 px first line, 12 px further lines."""
    lines = title.split("<br>")
    w = max(len(_plain(line)) * (8.6 if i == 0 else 6.9) for i, line in enumerate(lines))
    return int(w) + 40, 22 + 17 * (len(lines) - 1)


def check_unknown(kind: str, unknown: dict[str, Any], allowed: list[str]) -> None:
    if unknown:
        names = ", ".join(sorted(unknown))
        raise WorkbenchError(f"{kind} got unknown option(s) {names}; the options are: {', '.join(allowed)}.")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise WorkbenchError(f"{name}={value!r} is not one of {', '.join(repr(c) for c in choices)}.")
    return value


def check_index(name: str, value: Any, n: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise WorkbenchError(f"{name} must be an int, not {value!r}.")
    if not 0 <= int(value) < n:
        raise WorkbenchError(f"{name}={value} is out of range: this {what} has {n} ({name} 0..{n - 1}).")
    return int(value)


def layout(
    fig,
    *,
    title: str,
    template: Any,
    width: int | None,
    height: int | None,
    auto_width: int,
    auto_height: int,
    top: int = 36,
) -> None:
    """Title, template, font and size; shared by every figure. `width=None`: `auto_width`, widened (up
    to 1600 px) until the title fits; the top margin grows with the title's lines."""
    if template is not None:
        import plotly.io as pio

        if isinstance(template, str) and template not in pio.templates:
            raise WorkbenchError(
                f"template={template!r} is not a plotly template; try 'plotly_white' or 'plotly_dark' "
                f"(all: {', '.join(pio.templates)})."
            )
        fig.update_layout(template=template)
    need_w, need_h = title_size(title)
    if width is None:
        width = clamp(max(auto_width, need_w), 300, 1600)
    if height is None:
        height = auto_height + need_h
    head, _, sub = title.partition("<br>")
    fig.update_layout(
        title=dict(
            text=head,
            x=0,
            xref="paper",
            xanchor="left",
            font=dict(size=15),
            subtitle=dict(text=sub, font=dict(size=12)),
        ),
        font=dict(family=FONT, size=12),
        width=width,
        height=height,
        margin=dict(l=70, r=30, t=top + need_h + 20, b=60),
    )


def symmetric_range(z: np.ndarray) -> float:
    finite = np.abs(z[np.isfinite(z)])
    m = float(finite.max()) if finite.size else 1.0
    return m if m > 0 else 1.0


def clamp(v: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, v)))
