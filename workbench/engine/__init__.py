"""The engine room: sites, edits, and the engines that apply lists of edits (traced, replay, hooks)."""
