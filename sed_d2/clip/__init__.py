"""Everything about CLIP, built on pip ``open_clip_torch`` (never vendored or patched)."""
