"""Configuration of the WMTP model: Meta's multi-token-prediction LLaMA plus an optional value head.

This file imports only `transformers` so it can be shipped next to a checkpoint and loaded with
`trust_remote_code=True` where `wmtp_hf` is not installed.
"""

from transformers import PretrainedConfig
from transformers.activations import ACT2FN


def _check(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValueError(f"WmtpConfig.{field}: {message}")


class WmtpConfig(PretrainedConfig):
    r"""Configuration of [`WmtpForMultiTokenPrediction`].

    Field names follow `LlamaConfig`. `num_hidden_layers` counts **all** transformer blocks, as Meta's
    `n_layers` does: the trunk has `num_hidden_layers - n_future_tokens` blocks and each of the
    `n_future_tokens` prediction heads is one block reading the trunk output. Head 0 predicts the next
    token; head k predicts the token k + 1 positions ahead.

    Args:
        n_future_tokens: number of parallel prediction heads (Meta's `n_future_tokens`).
        use_value_head: add `value_head = Linear(hidden_size, 1)` reading `norm(h_trunk)`, the trunk output
            through the shared final norm (the state every prediction head reads).
        value_head_stage: the training stage that last trained the value head (`critic`, `verifiable`),
            or None for an untrained (fresh) head; the verifiable stage requires a trained one.
        loss_chunk_size: positions per chunk when computing the cross-entropy of each head, bounding
            the memory of logits to `loss_chunk_size x vocab_size` per head.
        tie_word_embeddings: share one matrix between `embed_tokens` and `lm_head` (as LLaMA-family models
            such as SmolLM2 do; `from_llama` keeps the LLaMA's choice). Meta's checkpoints are untied.
        Remaining arguments: as in `LlamaConfig`.
    """

    model_type = "wmtp"
    # The cache, under its name from transformers 5.25 and before: `Trainer.prediction_step` drops it.
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 4096,
        intermediate_size: int = 11008,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 4096,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-5,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = 1,
        eos_token_id: int | list[int] | None = 2,
        tie_word_embeddings: bool = False,
        rope_parameters: dict | None = None,
        attention_bias: bool = False,
        attention_dropout: float = 0.0,
        mlp_bias: bool = False,
        n_future_tokens: int = 4,
        use_value_head: bool = False,
        value_head_stage: str | None = None,
        loss_chunk_size: int = 1024,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.mlp_bias = mlp_bias
        self.n_future_tokens = n_future_tokens
        self.use_value_head = use_value_head
        self.value_head_stage = value_head_stage
        self.loss_chunk_size = loss_chunk_size
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.tie_word_embeddings = tie_word_embeddings
        rope_theta = kwargs.pop("rope_theta", 10000.0)
        rope_scaling = kwargs.pop("rope_scaling", None)
        self.rope_parameters = dict(rope_parameters or rope_scaling or {})
        self.rope_parameters.setdefault("rope_type", self.rope_parameters.pop("type", "default"))
        self.rope_parameters.setdefault("rope_theta", rope_theta)
        self._validate()  # before the base class, whose own checks give less precise messages
        super().__init__(**kwargs)
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads

    @property
    def num_next_token_layers(self) -> int:
        """Blocks on the next-token path, trunk + head 0: what `LlamaConfig.num_hidden_layers` counts."""
        return self.num_hidden_layers - self.n_future_tokens + 1

    def _validate(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "n_future_tokens",
            "loss_chunk_size",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                name,
                f"expected a positive integer, got {value!r}",
            )
        _check(
            self.n_future_tokens <= self.num_hidden_layers,
            "n_future_tokens",
            f"expected <= num_hidden_layers ({self.num_hidden_layers}): each head is one block of the "
            f"{self.num_hidden_layers}, got {self.n_future_tokens}",
        )
        if self.head_dim is None:
            _check(
                self.hidden_size % self.num_attention_heads == 0,
                "num_attention_heads",
                f"expected a divisor of hidden_size ({self.hidden_size}), got {self.num_attention_heads}",
            )
        else:
            _check(
                isinstance(self.head_dim, int) and self.head_dim > 0 and self.head_dim % 2 == 0,
                "head_dim",
                f"expected a positive even integer, got {self.head_dim!r}",
            )
        _check(
            self.num_attention_heads % self.num_key_value_heads == 0,
            "num_key_value_heads",
            f"expected a divisor of num_attention_heads ({self.num_attention_heads}), "
            f"got {self.num_key_value_heads}",
        )
        _check(
            isinstance(self.rms_norm_eps, (int, float)) and self.rms_norm_eps > 0,
            "rms_norm_eps",
            f"expected a positive number, got {self.rms_norm_eps!r}",
        )
        _check(
            self.hidden_act in ACT2FN,
            "hidden_act",
            f"expected an activation name such as 'silu', got {self.hidden_act!r}",
        )
        theta = self.rope_parameters.get("rope_theta")
        _check(
            isinstance(theta, (int, float)) and not isinstance(theta, bool) and theta > 0,
            "rope_parameters",
            f"expected a positive rope_theta, got {theta!r}",
        )
        _check(
            isinstance(self.attention_dropout, (int, float)) and 0 <= self.attention_dropout < 1,
            "attention_dropout",
            f"expected a probability in [0, 1), got {self.attention_dropout!r}",
        )
        _check(
            isinstance(self.use_value_head, bool),
            "use_value_head",
            f"expected true or false, got {self.use_value_head!r}",
        )
        _check(
            self.value_head_stage is None or isinstance(self.value_head_stage, str),
            "value_head_stage",
            f"expected a stage name or null, got {self.value_head_stage!r}",
        )
        _check(
            isinstance(self.tie_word_embeddings, bool),
            "tie_word_embeddings",
            f"expected true or false, got {self.tie_word_embeddings!r}",
        )


__all__ = ["WmtpConfig"]
