"""Unified training data: one record format for retrieval, STS and classification (QZhou's unified data
transformation), readers that stream, converters from common formats, validation, decontamination and the
multi-dataset batch sampler."""
