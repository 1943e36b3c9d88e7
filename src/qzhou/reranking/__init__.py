"""The LLM reranker (Qwen3-Reranker format): exact scoring, export to sentence-transformers / transformers / vLLM,
command line, and reranking evaluation."""

from qzhou.reranking.model import Reranker
from qzhou.reranking.template import RerankerConfig

__all__ = ["Reranker", "RerankerConfig"]
