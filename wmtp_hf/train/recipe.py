"""Training defaults that know what the run starts from (docs/training.md "Fine-tuning a pretrained model").

The micro preset is a random 2M-parameter model: a high learning rate (2e-3) trains it in minutes. The same
rate wrecks a pretrained model (SmolLM2-135M: held-out head-0 CE 1.43 -> 4.26 in 5 steps), whose new extra
heads also start far from their targets (CE 11-13) and, with uniform head weights, flood the shared trunk
with their gradients. So a pretrained start gets a fine-tuning recipe. Only options left unset (None) take
a recipe's value: anything the user gives, in a config file or on the command line, wins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECIPES = ("auto", "micro", "finetune")

# The random micro model (the values `configs/defaults.yaml` had before the recipes existed).
MICRO_RECIPE: dict[str, Any] = {
    "learning_rate": 2e-3,
    "warmup_steps": 10,
    "head_warmup_steps": 0,
    "head_learning_rate": None,  # learning_rate
    "head_init": "copy_last",
    "head_weights": None,  # uniform, 1/n each
}

# A pretrained start; measured on SmolLM2-135M-Instruct (docs/training.md has the runs that chose it).
FINETUNE_RECIPE: dict[str, Any] = {
    "learning_rate": 2e-5,  # also TRL's SFTConfig default
    "warmup_steps": 3,
    "head_warmup_steps": 0,  # measured: no gain for head 0 once the heads have their own rate (docs)
    "head_learning_rate": 1e-3,
    "head_init": "copy_last",
    "head_weights": [0.7, 0.1, 0.1, 0.1],
}


def _is_micro_folder(path: str) -> bool:
    """Whether `path` is a local model folder no larger than the micro preset (hidden size at most the
    preset's): the preset, a model trained from it (e.g. the baseline run a critic continues) or a tiny
    random model; all start far from any data and want the micro recipe's high learning rate."""
    from ..micro import MICRO_CONFIG

    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return False
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    hidden = config.get("hidden_size")
    return isinstance(hidden, int) and hidden <= MICRO_CONFIG["hidden_size"]


def recipe_kind(recipe: str, model_name_or_path: str | None) -> str:
    """`micro` or `finetune`. `auto` is finetune for a pretrained start: a registered name (smollm2-135m),
    a .gguf file, a Hub id, or a local model folder larger than the micro preset; micro for the micro
    preset (no model given), a folder no larger than it (a run trained from it, a tiny random model) or a
    folder not written yet (a previous stage's output in the micro pipeline; the experiment names the
    recipe of its chain)."""
    if recipe != "auto":
        return recipe
    if model_name_or_path is None:
        return "micro"
    from ..messages import looks_like_hub_id
    from ..models import is_named_model

    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        return "finetune" if (path / "config.json").is_file() and not _is_micro_folder(str(path)) else "micro"
    if is_named_model(model_name_or_path) or looks_like_hub_id(model_name_or_path):
        return "finetune"
    return "micro"


def recipe_values(kind: str, n_heads: int) -> dict[str, Any]:
    """The recipe's values; fine-tuning head weights are `0.7` for head 0 and the rest shared by the others."""
    values = dict(MICRO_RECIPE if kind == "micro" else FINETUNE_RECIPE)
    if kind == "finetune":
        values["head_weights"] = [0.7] + [0.3 / (n_heads - 1)] * (n_heads - 1) if n_heads > 1 else [1.0]
    return values


def apply_recipe(config: Any) -> None:
    """Fill the options of `config` left unset (None) with its recipe's values; record the recipe used and
    (in `config.recipe_filled`) which options it filled."""
    config.recipe = recipe_kind(config.recipe, config.model_name_or_path)
    config.recipe_filled = []
    for key, value in recipe_values(config.recipe, config.n_future_tokens).items():
        if getattr(config, key, None) is None:
            setattr(config, key, value)
            config.recipe_filled.append(key)


def trained_head_weights(config: Any, n_heads: int) -> list[float] | None:
    """The head weights to train with for a model with `n_heads` heads: the recipe's rule when the recipe
    filled them (a WMTP start may have another number of heads than `n_future_tokens`), else the option."""
    if "head_weights" in getattr(config, "recipe_filled", []):
        return recipe_values(config.recipe, n_heads)["head_weights"]
    return config.head_weights
