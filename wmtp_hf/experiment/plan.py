"""The experiment's configuration (docs/design.md §9) and the resolved stage configs it implies.

`configs/experiment.yaml`:

    model: null          # start model of baseline and rho1 (null: the micro preset); a registered
                         # name (smollm2-135m) or .gguf file also starts the reference stage (its LLaMA)
    matched_baseline: true  # also continue baseline for verifiable's steps (a fair comparison)
    shared: {...}        # options every stage gets (dataset, seed, max_length, report_to, ...)
    stages:              # the stages to run, each with its own overrides; run in the fixed order
      baseline: {}       #   reference → baseline → critic → verifiable → rho1
      critic: {}
      verifiable: {}
      rho1: {}
    evaluation: {...}    # see `EvaluationOptions`
    seeds: [0]           # train every run once per seed (several: one folder per seed, intervals over seeds)
    control: null        # positive controls (see `ControlOptions`, configs/experiment_control.yaml)
    control_report: ...  # a control run's report.json, whose verdicts the report shows beside its own
    keep_checkpoints: false  # false: runs save only final/ (no checkpoint-N with optimizer state);
                             # true: the stages' own save options (save_steps, save_total_limit)

The experiment wires the stages together: critic starts from baseline's final model, verifiable from
critic's, and rho1's `reference_model` is the reference stage's output (added to the run when rho1 names
no reference of its own). Every stage writes to `<output_dir>/<stage>`.

Verifiable starts from a trained model (baseline + critic), so comparing it with baseline alone would
credit the weighting with extra training. With `matched_baseline: true` (the default) the experiment
also runs `baseline_matched`: the baseline stage continued from baseline's final model for as many steps
as verifiable trains, with verifiable's learning rate. Verifiable is compared with that run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models import is_named_model
from ..train.components import check_model_location
from ..train.config import ConfigError, WmtpTrainingConfig, check_values, config_to_dict, read_yaml
from ..train.recipe import recipe_kind
from ..train.stages import STAGE_CONFIGS
from .control_options import ControlOptions, control_overrides

STAGE_ORDER = ("reference", "baseline", "critic", "verifiable", "rho1")
# Run order (stage names and the matched baseline); a retrained run retrains every run after it.
RUN_ORDER = ("reference", "baseline", "critic", "verifiable", "baseline_matched", "rho1")
MATCHED = "baseline_matched"
# Stages whose start model is another stage's final model (unless the stage names its own).
UPSTREAM = {"critic": "baseline", "verifiable": "critic"}
TOP_LEVEL_KEYS = (
    "model", "matched_baseline", "shared", "stages", "evaluation", "seeds", "control", "control_report",
    "keep_checkpoints",
)  # fmt: skip
EXPERIMENT_OWNED = ("output_dir",)  # set by the experiment for every stage


@dataclass
class EvaluationOptions:
    """How every final model is measured on the held-out problems (the same way for each stage)."""

    split: str | None = field(default=None, metadata={"help": "held-out split (default: the source's)"})
    max_rows: int | None = field(
        default=None,
        metadata={"help": "held-out rows for CE and AUROC: a seeded draw keeping the correct/incorrect mix"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the max_rows draw (the same rows for every run)"})
    n_problems: int | None = field(default=None, metadata={"help": "problems for pass@k (default: all)"})
    n_samples: int = field(default=1, metadata={"help": "completions per problem"})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy"})
    k: list[int] = field(default_factory=lambda: [1], metadata={"help": "pass@k values"})
    max_new_tokens: int = field(default=128, metadata={"help": "tokens per completion"})
    batch_size: int = field(default=8, metadata={"help": "rows per forward / prompts per generate call"})
    timeout: float = field(default=10.0, metadata={"help": "seconds per sandboxed program"})
    speculative: bool = field(default=True, metadata={"help": "measure self-speculative tokens per forward"})
    inspect_examples: int = field(default=16, metadata={"help": "held-out examples for the weight plots"})
    isolation: str = field(
        default="namespaces",
        metadata={
            "help": "sandbox for pass@k: namespaces (fails closed where unavailable) or guard (weaker)"
        },
    )

    def __post_init__(self) -> None:
        for name in ("max_rows", "n_problems"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"evaluation.{name}: expected a positive integer or null, got {value}")
        if type(self.seed) is not int or self.seed < 0:
            raise ConfigError(f"evaluation.seed: expected a non-negative integer, got {self.seed!r}")
        for name in ("n_samples", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"evaluation.{name}: expected a positive integer, got {getattr(self, name)}"
                )
        if self.temperature < 0 or self.timeout <= 0:
            raise ConfigError("evaluation: expected temperature >= 0 and timeout > 0")
        if not self.k or any(k < 1 for k in self.k):
            raise ConfigError(f"evaluation.k: expected a list of positive integers, got {self.k}")
        if self.inspect_examples < 0:
            raise ConfigError(f"evaluation.inspect_examples: expected >= 0, got {self.inspect_examples}")
        if self.isolation not in ("namespaces", "guard"):
            raise ConfigError(f"evaluation.isolation: expected namespaces or guard, got {self.isolation!r}")


@dataclass
class StagePlan:
    """One run of the experiment: its name, its stage, resolved config, reuse fingerprint, and seed group.

    `key` names the run in records, folders and the report: the name with one seed, `seed_<s>/<name>`
    with several."""

    name: str
    stage: str
    config: WmtpTrainingConfig
    fingerprint: str
    key: str = ""

    def __post_init__(self) -> None:
        self.key = self.key or self.name

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def final_dir(self) -> Path:
        return self.output_dir / "final"


@dataclass
class ExperimentPlan:
    source: str
    output_dir: Path
    stages: list[StagePlan]
    evaluation: EvaluationOptions
    raw: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    control: ControlOptions | None = None  # when the plan is the positive control

    def run(self, name: str) -> StagePlan | None:
        """The run called `name` (of the first seed)."""
        return next((s for s in self.stages if s.name == name), None)

    def runs_named(self, name: str) -> list[StagePlan]:
        """The run called `name` of every seed, in seed order."""
        return [s for s in self.stages if s.name == name]


def default_config_dict() -> dict[str, Any]:
    """The built-in experiment (equal to `configs/experiment.yaml`): every stage on the micro defaults,
    with fewer steps than the stages' own defaults so the whole study takes about 15 minutes on 2 cores."""
    return {
        "model": None,
        "matched_baseline": True,
        "shared": {"max_steps": 150},
        "stages": {"baseline": {}, "critic": {}, "verifiable": {"max_steps": 100}, "rho1": {}},
        "evaluation": {},
        "seeds": [0],
        "control_report": "runs/experiment_control/report.json",
        "keep_checkpoints": False,
    }


def read_experiment_file(path: str | None) -> tuple[dict[str, Any], str]:
    """The experiment mapping from `path` (YAML, may `inherit:`), or the built-in default."""
    if path is None:
        return default_config_dict(), "built-in experiment"
    return read_yaml(Path(path)), str(path)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of option: value, got {type(value).__name__}")
    return dict(value)


def fingerprint(config: WmtpTrainingConfig) -> str:
    """sha256 of the stage's resolved config (what decides whether a finished stage can be reused)."""
    payload = json.dumps(config_to_dict(config), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def read_seeds(value: Any, where: str) -> list[int] | None:
    """A non-empty list of distinct non-negative integers (None: not given)."""
    if value is None:
        return None
    ok = isinstance(value, list) and value and all(type(v) is int and v >= 0 for v in value)
    if not ok or len(set(value)) != len(value):
        raise ConfigError(
            f"{where}: expected a list of distinct non-negative integers, e.g. [0, 1, 2], got {value!r}"
        )
    return list(value)


def build_plan(
    data: dict[str, Any],
    source: str,
    output_dir: str | Path,
    max_steps: int | None = None,
    seeds: list[int] | None = None,
) -> ExperimentPlan:
    """Validate the experiment mapping and resolve every run's config, once per seed (nothing is written).

    `seeds` (from `--seeds`) overrides the mapping's `seeds`. With one seed the runs live in
    `<output_dir>/<run>`; with several in `<output_dir>/seed_<s>/<run>`."""
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{source}: unknown key '{key}'; expected {', '.join(TOP_LEVEL_KEYS)}")
    matched = data.get("matched_baseline", True)
    if not isinstance(matched, bool):
        raise ConfigError(f"{source}: key 'matched_baseline' expects true or false, got {matched!r}")
    keep_checkpoints = data.get("keep_checkpoints", False)
    if not isinstance(keep_checkpoints, bool):
        raise ConfigError(f"{source}: key 'keep_checkpoints' expects true or false, got {keep_checkpoints!r}")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise ConfigError(
            f"{source}: key 'model' expects a folder, Hub id, registered model name or .gguf file, got {model!r}"
        )
    if model is not None:
        check_model_location(f"{source}: model", model)
    shared = _mapping(data.get("shared"), f"{source}: shared")
    stages = _mapping(data.get("stages"), f"{source}: stages")
    if not stages:
        raise ConfigError(f"{source}: stages: expected at least one of {', '.join(STAGE_ORDER)}")
    for name in stages:
        if name not in STAGE_ORDER:
            raise ConfigError(
                f"{source}: stages: unknown stage '{name}'; available: {', '.join(STAGE_ORDER)}"
            )
    for key in EXPERIMENT_OWNED:
        if key in shared or any(key in _mapping(v, "") for v in stages.values()):
            raise ConfigError(f"{source}: '{key}' is set by the experiment (<--output-dir>/<stage>)")
    eval_values = _mapping(data.get("evaluation"), f"{source}: evaluation")
    known = {f.name for f in dataclasses.fields(EvaluationOptions)}
    for key in eval_values:
        if key not in known:
            raise ConfigError(
                f"{source}: evaluation: unknown key '{key}'; allowed: {', '.join(sorted(known))}"
            )
    try:
        evaluation = EvaluationOptions(**eval_values)
    except TypeError as err:
        raise ConfigError(f"{source}: evaluation: {err}") from None

    seeds = seeds if seeds is not None else read_seeds(data.get("seeds"), f"{source}: seeds")
    if seeds is not None and ("seed" in shared or any("seed" in _mapping(v, "") for v in stages.values())):
        raise ConfigError(f"{source}: 'seed' is set by the experiment's seeds; remove it from shared/stages")
    control = None
    if data.get("control") is not None:
        control = ControlOptions.from_mapping(_mapping(data["control"], f"{source}: control"), source)
    output_dir = Path(output_dir)
    overrides = {name: _mapping(stages[name], f"{source}: stages.{name}") for name in stages}
    matched_overrides: dict[str, Any] = {}
    if control is not None:
        matched_overrides = control_overrides(control, shared, overrides, model, output_dir, source)
    rho1 = overrides.get("rho1")
    if rho1 is not None and rho1.get("reference_model") is None and "reference" not in overrides:
        overrides["reference"] = {}
    runs = [name for name in STAGE_ORDER if name in overrides]
    if matched and "verifiable" in overrides and "baseline" in overrides:
        runs.append(MATCHED)
    plans = []
    for seed in seeds or [None]:
        root = output_dir / f"seed_{seed}" if seeds is not None and len(seeds) > 1 else output_dir
        for name in sorted(runs, key=RUN_ORDER.index):
            plans.append(
                _resolve_run(name, seed, root, shared, overrides, matched_overrides, model, source, max_steps,
                             keep_checkpoints)
            )  # fmt: skip
        for plan in plans[-len(runs) :]:
            plan.key = str(Path(plan.output_dir).relative_to(output_dir))
    seed_list = seeds if seeds is not None else [plans[0].config.seed]
    return ExperimentPlan(source, output_dir, plans, evaluation, raw=data, seeds=seed_list, control=control)


def _resolve_run(
    name: str,
    seed: int | None,
    root: Path,
    shared: dict[str, Any],
    overrides: dict[str, dict[str, Any]],
    matched_overrides: dict[str, Any],
    model: str | None,
    source: str,
    max_steps: int | None,
    keep_checkpoints: bool = False,
) -> StagePlan:
    """One run's checked config (`seed`: the experiment's seed for it, or None to leave the stage's).

    Without `keep_checkpoints` the run saves only its final folder (`save_strategy: no`) unless its own
    options name a `save_strategy`: the experiment measures final models only, and a checkpoint with
    optimizer state is three times the model's size."""
    stage = "baseline" if name == MATCHED else name
    values = _run_values(name, shared, overrides, model, root, source)
    if name == MATCHED:
        values.update(matched_overrides)
    if not keep_checkpoints:
        values.setdefault("save_strategy", "no")
    if seed is not None:
        values["seed"] = seed
    if max_steps is not None:
        values["max_steps"] = max_steps
    cls = STAGE_CONFIGS[stage]
    check_values(values, cls, f"{source}: stages.{name} (with shared)")
    for key in ("model_name_or_path", "reference_model"):
        user_value = overrides.get(name, {}).get(key)
        if user_value is not None:
            check_model_location(f"{source}: stages.{name}.{key}", user_value)
    try:
        config = cls(**values)
    except ConfigError as err:
        raise ConfigError(f"{source}: stages.{name}: {err}") from None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{source}: stages.{name}: {' '.join(str(err).split())}") from None
    return StagePlan(name, stage, config, fingerprint(config))


def _run_values(
    name: str,
    shared: dict[str, Any],
    overrides: dict[str, dict[str, Any]],
    model: str | None,
    output_dir: Path,
    source: str,
) -> dict[str, Any]:
    """A run's option values: shared, then its own overrides, then the experiment's wiring."""
    if name == MATCHED:
        verifiable = {**shared, **overrides["verifiable"]}
        values = {**shared, **overrides["baseline"]}
        for key in ("max_steps", "learning_rate"):
            if key in verifiable:
                values[key] = verifiable[key]
        values["model_name_or_path"] = str(output_dir / "baseline" / "final")
        values["output_dir"] = str(output_dir / name)
        values["head_warmup_steps"] = verifiable.get("head_warmup_steps", 0)  # its heads are trained already
        values.setdefault("run_name", name)
        values.setdefault("recipe", recipe_kind("auto", model))
        return values
    own = overrides[name]
    values = {**shared, **own, "output_dir": str(output_dir / name)}
    values.setdefault("run_name", name)
    if name in UPSTREAM and own.get("model_name_or_path") is None:
        upstream = UPSTREAM[name]
        if upstream not in overrides:
            raise ConfigError(
                f"{source}: stages.{name} starts from the {upstream} stage's output: add stages.{upstream} "
                f"or set stages.{name}.model_name_or_path"
            )
        values["model_name_or_path"] = str(output_dir / upstream / "final")
    elif name in ("baseline", "rho1") and own.get("model_name_or_path") is None:
        values["model_name_or_path"] = model
    elif name == "reference" and own.get("model_name_or_path") is None and is_named_model(model or ""):
        values["model_name_or_path"] = model  # a registered name or .gguf file: its plain LLaMA folder
    elif name == "reference" and own.get("model_name_or_path") is None and model is not None:
        raise ConfigError(
            f"{source}: the reference stage needs a causal LM sharing the model's tokenizer: set "
            "stages.reference.model_name_or_path (or stages.rho1.reference_model)"
        )
    if name == "rho1" and own.get("reference_model") is None:
        values["reference_model"] = str(output_dir / "reference" / "final")
    values.setdefault("recipe", recipe_kind("auto", model))  # every stage of the chain: its start's recipe
    return values
