"""`qzhou serve`: an OpenAI- and TEI-compatible embedding (and rerank) server with dynamic batching, serving a
model exactly as `Embedder.encode` computes it. Needs the serving extra: `pip install 'qzhou[serve]'`.

app.py      FastAPI routes, auth / payload / metrics middleware, lifespan (warm-up, graceful drain)
engine.py   request options -> token ids -> batcher -> Matryoshka + normalise, per request
batcher.py  the asyncio dynamic batcher (token budget, longest first, one model thread, failure isolation)
rerank.py   the reranker side (prompts -> batcher -> p(yes), log-odds); rerank_routes.py its routes
launch.py   start a server process on a free port and wait until it is ready (bench, tests)
schemas.py  request bodies; errors.py the JSON error shape; metrics.py Prometheus; parity.py check-parity
"""
