"""Embedding-space diagnostics: streaming metrics, reports and recommendations."""
