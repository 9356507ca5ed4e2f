"""Push a saved model or LoRA adapter folder to the Hugging Face Hub in one commit (docs/design.md §8).

Used by the training run (`push_to_hub: true`) and by `python -m wmtp_hf.publish`. Everything is checked
before the first Hub call, so bad input uploads nothing. The commit holds the folder's top-level files
(weights, config with `auto_map`, modeling/configuration source, tokenizer, generation config) plus the
model card given as text; `training_args.bin` (a pickle of the arguments) and sub-folders are not uploaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard

from .errors import PublishError  # noqa: F401  (also importable from here)
from .remote_code import remote_code_files

SKIPPED_FILES = {"training_args.bin", "README.md"}  # README.md: replaced by the card text


@dataclass(frozen=True)
class ModelFolder:
    """A checked folder: a full model (`adapter` False) or a peft LoRA adapter."""

    path: Path
    adapter: bool
    n_heads: int
    base_model: str | None  # the adapter's `base_model_name_or_path`

    def files(self) -> list[Path]:
        """The files a push uploads (top level, not hidden, not `SKIPPED_FILES`)."""
        return sorted(
            p
            for p in self.path.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.name not in SKIPPED_FILES
        )

    def card(self) -> ModelCard:
        """The folder's README.md as a `ModelCard` (empty when there is none)."""
        readme = self.path / "README.md"
        return ModelCard(readme.read_text(encoding="utf-8")) if readme.is_file() else ModelCard("")


def read_json_object(path: Path, option: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PublishError(f"{option} '{path}': not a readable JSON file ({err})") from None
    if not isinstance(data, dict):
        raise PublishError(f"{option} '{path}': expected a JSON object")
    return data


def check_model_folder(folder: str | Path, option: str = "--model") -> ModelFolder:
    """A `ModelFolder`, or `PublishError` when `folder` is not a saved model or adapter folder."""
    path = Path(folder)
    if not path.is_dir():
        raise PublishError(f"{option} '{path}': no such folder")
    if (path / "adapter_config.json").is_file():
        if not (path / "adapter_model.safetensors").is_file():
            raise PublishError(f"{option} '{path}': adapter_config.json without adapter_model.safetensors")
        config = read_json_object(path / "adapter_config.json", option)
        return ModelFolder(path, True, 1, config.get("base_model_name_or_path"))
    if not (path / "config.json").is_file():
        raise PublishError(
            f"{option} '{path}': not a model folder (expected config.json with model.safetensors, or "
            "adapter_config.json with adapter_model.safetensors)"
        )
    config = read_json_object(path / "config.json", option)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = set(read_json_object(index, option).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise PublishError(f"{option} '{path}': shard {missing[0]} listed in {index.name} is missing")
    elif not (path / "model.safetensors").is_file():
        raise PublishError(f"{option} '{path}': config.json but no model.safetensors (or sharded index)")
    if config.get("model_type") == "wmtp":
        missing = [f for f in remote_code_files() if not (path / f).is_file()]
        if "auto_map" not in config or missing:
            what = missing[0] if missing else "auto_map in config.json"
            raise PublishError(
                f"{option} '{path}': no {what}, so it would not load with trust_remote_code; re-save it with "
                "save_pretrained after `import wmtp_hf`"
            )
    return ModelFolder(path, False, int(config.get("n_future_tokens", 1)), None)


def push_folder(
    folder: ModelFolder,
    repo_id: str,
    card_text: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = "Upload model",
    base_model: str | None = None,
) -> CommitInfo:
    """Create the repo (and `revision` branch) if needed and commit the folder's files and `card_text`.

    `base_model`: for an adapter, the Hub id written as `base_model_name_or_path` in the uploaded
    adapter_config.json (the local file is left as it is).
    """
    operations = []
    for path in folder.files():
        content: str | bytes = str(path)
        if folder.adapter and base_model and path.name == "adapter_config.json":
            config = json.loads(path.read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = base_model
            content = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
        operations.append(CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=content))
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card_text.encode()))
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    return api.create_commit(
        repo_id, operations=operations, commit_message=commit_message, revision=revision, repo_type="model"
    )
