"""Request and response models of the HTTP API (pydantic v2, unknown fields refused).

Static shape rules live here (roles, non-empty strings, one of messages/prompt); limits that come from settings
(items per request, characters per field, tokens) are checked in the scoring layer, which knows them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["system", "user", "assistant"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(_Strict):
    role: Role
    content: str = Field(min_length=1)


class _Conversation(_Strict):
    messages: list[ChatMessage] | None = Field(
        default=None, description="OpenAI-style turns (system/user/assistant) ending with a user turn."
    )
    prompt: str | None = Field(default=None, min_length=1, description="Shorthand for a single user turn.")

    @model_validator(mode="after")
    def _one_of(self) -> _Conversation:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' or 'prompt'")
        return self

    def as_messages(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return [{"role": m.role, "content": m.content} for m in self.messages]
        return [{"role": "user", "content": self.prompt or ""}]


class ScoreInput(_Conversation):
    response: str = Field(min_length=1, description="The assistant response to score.")


class _Options(_Strict):
    truncate: bool = Field(
        default=True, description="Drop the oldest conversation tokens when over the token limit; false → 422 instead."
    )
    weights: dict[str, float] | None = Field(
        default=None,
        description="Steering: objective → non-negative weight; replaces the learned gating for this request.",
    )
    mask: list[str] | None = Field(
        default=None, description="Steering: objectives switched off; the other gating weights are rescaled to keep β."
    )
    timeout_s: float | None = Field(
        default=None, gt=0, description="Deadline for this request (capped by the server's)."
    )


class ScoreRequest(_Options):
    items: list[ScoreInput] = Field(min_length=1, description="Conversations + responses, scored in order.")
    return_objectives: bool = Field(default=False, description="Also return the per-objective values of each item.")


class ExplainRequest(_Options):
    items: list[ScoreInput] = Field(min_length=1)


class CompareRequest(_Options, _Conversation):
    responses: list[str] = Field(min_length=2, description="Two or more candidate responses to one conversation.")


class GetRewardRequest(_Strict):
    """OpenRLHF `serve_rm` protocol: full chat-templated texts (conversation + response)."""

    query: list[str] = Field(min_length=1)


class ReloadRequest(_Strict):
    version: str | None = Field(default=None, description="Version or alias to load; default: the configured alias.")


# -- responses -------------------------------------------------------------------------------------------------


class ScoreResult(BaseModel):
    score: float
    truncated: bool
    tokens: int
    objectives: dict[str, float] | None = Field(default=None, description="Raw objective values r (return_objectives).")


class ScoreResponse(BaseModel):
    model: str
    version: str
    results: list[ScoreResult]


class Contributor(BaseModel):
    objective: str
    contribution: float


class ExplainResult(BaseModel):
    score: float
    truncated: bool
    tokens: int
    rewards: dict[str, float] = Field(description="Raw objective values r = W h + b.")
    debiased: dict[str, float] = Field(description="Verbosity-debiased values r' = T r.")
    weights: dict[str, float] = Field(description="Gating weights g (or the request's steering weights).")
    contributions: dict[str, float] = Field(description="g_i · r'_i; they sum to the score.")
    verbosity_penalty: float = Field(description="Σ g_i (r_i − r'_i): what debiasing took off the score.")
    top_contributors: list[Contributor] = Field(description="Largest contributions by absolute value.")
    steered: bool


class ExplainResponse(BaseModel):
    model: str
    version: str
    objectives: list[str]
    results: list[ExplainResult]


class PairProbability(BaseModel):
    a: int
    b: int
    p_a_over_b: float = Field(description="Bradley-Terry P(a ≻ b) = σ(R_a − R_b) (β is inside R).")


class CompareResponse(BaseModel):
    model: str
    version: str
    scores: list[float]
    truncated: list[bool]
    ranking: list[int] = Field(description="Response indices, best first (ties keep input order).")
    best: int
    pairwise: list[PairProbability]


class GetRewardResponse(BaseModel):
    rewards: list[float]


class ObjectiveInfo(BaseModel):
    name: str
    kind: str
    description: str
    source: str
    metrics: dict[str, float]


class BackboneInfo(BaseModel):
    id: str
    revision: str
    hidden_size: int
    max_length: int


class LoadedModelInfo(BaseModel):
    model: str
    version: str
    created_at: str
    loaded_at: str
    backbone: BackboneInfo
    pooling: str  # the response feature the heads read: "last" (end-of-turn token) or "mean" (over the response)
    objectives: list[ObjectiveInfo]
    gating: dict[str, Any]
    metrics: dict[str, Any]


class ReloadStatus(BaseModel):
    result: Literal["success", "failure", "unchanged"]
    version: str | None
    error: str | None = None
    at: str
    backbone_reloaded: bool = False
    seconds: float = 0.0


class StoreInfo(BaseModel):
    model: str
    alias: str
    versions: list[str]
    aliases: dict[str, str]


class ModelsResponse(BaseModel):
    loaded: LoadedModelInfo | None
    store: StoreInfo
    last_reload: ReloadStatus | None


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    status: str
    model: str
    version: str


class ErrorDetail(BaseModel):
    type: str = Field(description="Stable error type (see docs/SERVICE.md, error table).")
    message: str
    field: str | None = Field(default=None, description="The offending request field, e.g. items[0].messages[1].role.")
    request_id: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
