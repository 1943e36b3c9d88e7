"""Request bodies of the four API shapes (OpenAI embeddings, TEI embed and rerank, Jina / Cohere rerank) as
pydantic models. Unknown fields are errors that name the field (a typo never silently changes the answer);
inputs are normalised here to a list of strings or a list of token-id lists."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qzhou.serving import errors

Inputs = list[str] | list[list[int]]


def normalise_inputs(v: Any) -> Inputs:
    """str | [str] | [int] | [[int]] -> [str] or [[int]]; mixed lists, bools, floats and empties are errors."""
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list):
        raise ValueError(f"expected a string, a list of strings, or token-id lists (got {type(v).__name__})")
    if not v:
        raise ValueError("is an empty list; send at least one input")
    if all(isinstance(x, str) for x in v):
        return v
    if all(_is_int(x) for x in v):
        return [v]
    if all(isinstance(x, list) for x in v):
        for i, ids in enumerate(v):
            if not ids:
                raise ValueError(f"token list {i} is empty; send at least one token id")
            if not all(_is_int(t) for t in ids):
                raise ValueError(f"token list {i} holds something other than integer token ids")
        return v
    kinds = sorted({type(x).__name__ for x in v})
    raise ValueError(f"mixes or holds unsupported types ({', '.join(kinds)}); send all strings or all token-id "
                     "lists")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _EmbedOptions(_Strict):
    """qzhou's extensions, shared by the OpenAI and TEI routes: how the model's instruction template applies."""

    instruction: str | None = None
    prompt_name: Literal["query", "document"] | None = None
    task: str | None = None
    dimensions: int | None = Field(default=None, ge=1)
    truncate: bool = False


class EmbeddingsRequest(_EmbedOptions):
    """`POST /v1/embeddings` (OpenAI)."""

    input: Inputs
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None

    _inputs = field_validator("input", mode="before")(lambda cls, v: normalise_inputs(v))


class EmbedRequest(_EmbedOptions):
    """`POST /embed` (text-embeddings-inference)."""

    inputs: Inputs
    normalize: bool = True
    truncation_direction: Literal["right", "Right"] = "right"

    _inputs = field_validator("inputs", mode="before")(lambda cls, v: normalise_inputs(v))


class TeiRerankRequest(_Strict):
    """`POST /rerank` (text-embeddings-inference)."""

    query: str
    texts: list[str] = Field(min_length=1)
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool = False
    truncation_direction: Literal["right", "Right"] = "right"
    instruction: str | None = None


class _Document(_Strict):
    text: str


class RerankRequest(_Strict):
    """`POST /v1/rerank` (Jina / Cohere)."""

    query: str
    documents: list[str | _Document] = Field(min_length=1)
    model: str | None = None
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = True
    instruction: str | None = None
    truncate: bool = True

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


def parse(model: type[BaseModel], body: bytes) -> Any:
    """Validate a JSON body; the first problem becomes a 422 naming the field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "body"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(model.model_fields)
            msg = f"unknown field; allowed: {allowed}"
        raise errors.invalid(f"field '{where}': {msg}", "invalid_" + ("json" if err["type"] == "json_invalid"
                                                                        else "field")) from None
