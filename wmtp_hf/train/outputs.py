"""A run's final folder (model or LoRA adapter, tokenizer, model card, merged model) and its Hub push."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..hub import check_model_folder, push_folder
from ..model_card import write_model_card
from ..trained_problems import TrainedProblems, write_record
from .config import WmtpTrainingConfig, config_to_dict
from .lora import MERGED_DIR, save_merged

FINAL_DIR = "final"


class FinalFolderPush:
    """`Trainer.push_to_hub` that publishes the run's final folder: weights, config with `auto_map` and
    source, tokenizer, generation config and this project's model card, in one commit.

    transformers' own push uploads `output_dir` (checkpoint scratch included) with a card it writes itself.
    The run sets `final_folder` once that folder is complete; until then (e.g. a user's `save_model`) the
    push is transformers' own.
    """

    final_folder: Path | None = None

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ):
        if self.final_folder is None:
            return super().push_to_hub(commit_message, blocking, token, revision, private, **kwargs)
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if not self.is_world_process_zero():
            return None
        self._finish_current_push()
        folder = check_model_folder(self.final_folder, "final folder")
        return push_folder(
            folder,
            self.hub_model_id or self.args.hub_model_id,
            (folder.path / "README.md").read_text(encoding="utf-8"),
            token=token if token is not None else self.args.hub_token,
            private=private if private is not None else self.args.hub_private_repo,
            revision=revision if revision is not None else self.args.hub_revision,
            commit_message=commit_message or "End of training",
        )


def write_final_folder(
    trainer: Any,
    config: WmtpTrainingConfig,
    stage: str,
    tokenizer: Any,
    n_heads: int,
    final_loss: float | None,
    trained: TrainedProblems | None = None,
) -> Path:
    """Save `<output_dir>/final` (the adapter with `use_peft`), its tokenizer, card and `trained` (the
    problems trained on, `trained_problems.json`), and with `merge_lora` the merged full model in
    `final/merged`. Returns the folder a push publishes: the merged model when there is one, else `final`."""
    final_dir = Path(config.output_dir) / FINAL_DIR
    # The full model keeps the dtype it trained in (bf16 stays bf16; the adapter of use_peft keeps its own).
    # Never transformers' push here: it would run before the tokenizer and card exist.
    trainer.save_final_model(str(final_dir), keep_training_dtype=not config.use_peft)
    model = trainer.accelerator.unwrap_model(trainer.model)
    base = model.peft_config["default"].base_model_name_or_path if config.use_peft else None
    card = {
        "stage": stage,
        "config": config_to_dict(config),
        "n_heads": n_heads,
        "datasets": [config.dataset],
        "steps": trainer.state.global_step,
        "final_loss": final_loss,
        "model_name": (config.hub_model_id or Path(config.output_dir).name).split("/")[-1],
        "repo_id": config.hub_model_id or "path/to/model",
    }
    publish = final_dir
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(final_dir)
        if trained is not None:
            write_record(final_dir, trained)
        write_model_card(
            final_dir, base_model=base or config.model_name_or_path, adapter=config.use_peft, **card
        )
        if config.use_peft and config.merge_lora:
            publish = save_merged(final_dir, final_dir / MERGED_DIR, model.get_base_model().config, tokenizer)
            write_model_card(publish, base_model=config.model_name_or_path, **card)
            if trained is not None:
                write_record(publish, trained)
    elif config.use_peft and config.merge_lora:
        publish = final_dir / MERGED_DIR
    return publish
