"""qzhou: turn a decoder LLM into a text embedder, the way QZhou-Embedding and Qwen3-Embedding were built.

`import qzhou` pulls in only the core dependencies (torch, transformers); features with heavy extras import
them where they are used.
"""

from qzhou.config import EmbedderConfig
from qzhou.modeling.embedder import Embedder
from qzhou.reranking.model import Reranker

__version__ = "0.1.0"
__all__ = ["Embedder", "EmbedderConfig", "Reranker", "__version__"]
