"""Request and response models of the HTTP API (pydantic v2; unknown fields refused, except on `/get_reward`).

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
    # "Exactly one of messages / prompt", stated in the schema too, so schema-driven clients and fuzzers can build
    # valid requests.
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["messages"]}, {"required": ["prompt"]}]}
    )

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
    response: str = Field(description="The assistant response to score (may be empty: a policy that wrote nothing).")


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


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote reward-model protocol, every version since 0.5: chat-templated texts (conversation +
    response) in `query`; since 0.6 also the templated `prompts` and the dataset's `labels`. Fields a later client
    adds are ignored (on this route only), so a client upgrade never turns every request into a 422."""

    model_config = ConfigDict(extra="allow")

    query: list[str] = Field(min_length=1, description="prompt + response, rendered with the policy's chat template.")
    prompts: list[str] | None = Field(
        default=None, description="The templated prompt of each query: the response is what follows it."
    )
    labels: list[Any] | None = Field(default=None, description="Dataset labels (accepted; not used by this model).")

    @model_validator(mode="after")
    def _aligned(self) -> GetRewardRequest:
        if self.prompts is not None and len(self.prompts) != len(self.query):
            raise ValueError(f"prompts has {len(self.prompts)} entries for {len(self.query)} queries")
        return self


class UntemplateRequest(_Strict):
    text: str = Field(min_length=1, description="A chat-templated conversation ending with an assistant response.")
    prompt: str | None = Field(
        default=None, description="The templated prompt the response followed (then the response is what follows it)."
    )


class UntemplateResponse(BaseModel):
    """What the service reads from a templated text: the turns and the response `/get_reward` would score."""

    messages: list[ChatMessage]
    response: str
    unterminated: bool = Field(description="The response carried no end-of-turn marker.")
    family: str = Field(description="The template family recognised (chatml, llama3, ... or the backbone's own).")


class ReloadRequest(_Strict):
    version: str | None = Field(
        default=None,
        min_length=1,
        description="Version or alias to load and pin (the watcher leaves a pin until the alias moves); default: "
        "the configured alias, which also releases a pin.",
    )


# -- responses -------------------------------------------------------------------------------------------------


class ItemError(BaseModel):
    type: str = Field(description="Stable error type (see docs/SERVICE.md, error table).")
    message: str
    field: str | None = Field(default=None, description="The offending request field, e.g. items[3].response.")


class ScoreResult(BaseModel):
    score: float | None = Field(description="The reward; null only when this item failed (see `error`).")
    truncated: bool = False
    tokens: int = 0
    objectives: dict[str, float] | None = Field(default=None, description="Raw objective values r (return_objectives).")
    error: ItemError | None = Field(default=None, description="Why this item alone was not scored.")


class ScoreResponse(BaseModel):
    model: str
    version: str
    results: list[ScoreResult]


class Contributor(BaseModel):
    objective: str
    contribution: float


class ExplainResult(BaseModel):
    score: float | None = Field(description="The reward; null only when this item failed (see `error`).")
    truncated: bool = False
    tokens: int = 0
    rewards: dict[str, float] = Field(default_factory=dict, description="Raw objective values r = W h + b.")
    debiased: dict[str, float] = Field(default_factory=dict, description="Verbosity-debiased values r' = T r.")
    weights: dict[str, float] = Field(
        default_factory=dict, description="Gating weights g (or the request's steering weights)."
    )
    contributions: dict[str, float] = Field(default_factory=dict, description="g_i · r'_i; they sum to the score.")
    verbosity_penalty: float = Field(default=0.0, description="Σ g_i (r_i − r'_i): what debiasing took off the score.")
    top_contributors: list[Contributor] = Field(
        default_factory=list, description="Largest contributions by absolute value."
    )
    steered: bool = False
    error: ItemError | None = Field(default=None, description="Why this item alone was not scored.")


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
    """What OpenRLHF's clients read (`rewards`; `scores` and `extra_logs` when present), plus per-item detail."""

    rewards: list[float | None] = Field(description="One reward per query; null only for a query that failed alone.")
    scores: list[float | None] = Field(description="The same values (OpenRLHF's dynamic filtering reads `scores`).")
    extra_logs: dict[str, list[float | None]] = Field(
        description="Per query: every objective's raw value, `truncated` and `unterminated` (0/1); OpenRLHF logs "
        "each key. A failed query has null here."
    )
    unterminated: list[bool] = Field(description="The response carried no end-of-turn marker (cut off, or stripped).")
    errors: list[ItemError | None] | None = Field(default=None, description="Per query, when any failed alone.")


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
    backend: str = Field(description="What runs the backbone: transformers or vllm (ARMO_BACKEND).")
    delta: str | None = Field(
        default=None,
        description="sha256 of the artifact's backbone delta (reward-tuned layers, stage 0) merged into the "
        "backbone; null: the backbone as published.",
    )
    delta_layers: list[int] = Field(default_factory=list, description="The decoder layers the delta changes.")
    precision: str = Field(
        default="float32",
        description="The precision the backbone's matmuls run in (float32 or bfloat16; ARMO_DTYPE, auto resolved).",
    )
    precision_agreement: dict[str, Any] | None = Field(
        default=None,
        description="For a precision other than the one the heads were fit in: the agreement the artifact states "
        "for it (mean and max |Δ score| against the fit precision on validation items, the bound).",
    )
    compiled: bool = Field(
        default=False, description="The backbone runs compiled by torch.compile (ARMO_COMPILE, auto resolved)."
    )


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


class LimitsInfo(BaseModel):
    """What one request may carry; clients chunk and set deadlines by these."""

    max_items: int
    max_chars: int
    max_tokens: int | None = Field(description="Token limit per sequence of the loaded model (null: none loaded).")
    request_timeout_s: float = Field(description="Deadline of a request that names none.")
    max_request_timeout_s: float = Field(description="Longest deadline a request may ask for (`timeout_s`).")
    get_reward_timeout_s: float = Field(description="Deadline of /get_reward requests (their clients name none).")


class ModelsResponse(BaseModel):
    loaded: LoadedModelInfo | None
    store: StoreInfo
    last_reload: ReloadStatus | None
    limits: LimitsInfo


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
