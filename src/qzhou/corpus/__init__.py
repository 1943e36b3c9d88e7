"""Corpus-scale encoding and mining: resumable parquet shards + manifest, `local` / `ray` engines, `--shard i/N`,
and mining over the shards with a faiss index picked by corpus size. See the README section "Corpus scale"."""

from qzhou.corpus.encode import CorpusJob, encode_corpus
from qzhou.corpus.worker import EncodeSettings

__all__ = ["CorpusJob", "EncodeSettings", "encode_corpus"]
