"""The extractor registry: which extractors heads may be pinned to, their lifecycle, and moves."""
