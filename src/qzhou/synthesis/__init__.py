"""Data synthesis through an OpenAI-compatible LLM API (QZhou's paraphrase / extend / hard negatives, Qwen3's
queries from documents), journaled in SQLite so a killed job resumes without repeating finished requests.
Heavy imports stay in the submodules (`import qzhou.synthesis` is cheap)."""
