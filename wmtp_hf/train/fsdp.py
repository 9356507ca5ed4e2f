"""FSDP2 for the project's trainers: the CPU mode (torch's `fully_shard`, gloo) and saving under any FSDP2.

Accelerate never gives FSDP on CPU (it silently falls back to DDP), so with `fsdp` set on a CPU run under
`torchrun --nproc_per_node N` (N >= 2) the config keeps the request in `cpu_fsdp` and hides it from
transformers; `Fsdp2TrainerMixin` then shards the model itself (each decoder layer, then the root) before
the optimizer is created, tells the Trainer the model owns its gradient reduction (no DDP wrap), and
saves and loads checkpoints with `torch.distributed.checkpoint` (FULL: gathered files; SHARDED: one
shard per process). On GPU, accelerate's own FSDP2 runs; the saving fixes below apply to both:

- a model under `fully_shard` has a dynamic class (`FSDPWmtpForMultiTokenPrediction` in a torch module),
  and transformers names remote code by `type(model).__module__`: `plain_class` saves it as the model's
  own class, so `auto_map` and `modeling_wmtp.py` are right;
- `final/` is always a complete `save_pretrained` folder: the full state dict is gathered on process 0,
  whatever the checkpoints' state-dict type.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

STATE_DICT_TYPES = ("FULL_STATE_DICT", "SHARDED_STATE_DICT")
SHARDED_MODEL_DIR = "pytorch_model_fsdp_0"  # the names accelerate uses for its sharded checkpoints
SHARDED_OPTIMIZER_DIR = "optimizer_0"
FULL_OPTIMIZER_FILE = "optimizer.pt"


def fsdp_requested(fsdp: Any) -> bool:
    """Whether a `TrainingArguments.fsdp` value asks for FSDP (`""`, None, False, [] do not)."""
    if isinstance(fsdp, str):
        return fsdp.strip().lower() not in ("", "false", "no")
    return bool(fsdp)


def runs_on_cpu(use_cpu: bool) -> bool:
    return use_cpu or not torch.cuda.is_available()


def cpu_fsdp_settings(fsdp: Any, fsdp_config: Any, bf16: bool, fp16: bool) -> dict[str, Any]:
    """The validated CPU FSDP2 settings of a config asking for FSDP on CPU; one-line `ConfigError` when
    FSDP cannot run here (one process, FSDP1, mixed precision, unknown options)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 2:
        raise ConfigError(
            "fsdp: FSDP on CPU needs several processes: launch with torchrun --nproc_per_node 2 -m wmtp_hf.train "
            f"... (this run has WORLD_SIZE={world_size}); for one process drop fsdp"
        )
    options = dict(fsdp_config or {}) if not isinstance(fsdp_config, str) else None
    if options is None:
        raise ConfigError(
            "fsdp_config: on CPU give the options as a mapping in the YAML file, not a file name"
        )
    options = {k[5:] if k.startswith("fsdp_") else k: v for k, v in options.items()}
    known = {"version", "transformer_layer_cls_to_wrap", "reshard_after_forward", "state_dict_type",
             "auto_wrap_policy", "min_num_params", "cpu_ram_efficient_loading", "offload_params"}  # fmt: skip
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"fsdp_config: option '{unknown[0]}' is not supported by FSDP2 on CPU; supported: {', '.join(sorted(known))}"
        )
    if int(options.get("version", 2)) != 2:
        raise ConfigError(
            f"fsdp_config: version {options['version']} on CPU; only FSDP2 (version: 2) runs on CPU"
        )
    if bf16 or fp16:
        raise ConfigError(
            "bf16/fp16: FSDP on CPU trains in float32; drop bf16/fp16 (mixed precision is a GPU setting)"
        )
    state_dict_type = str(options.get("state_dict_type", "FULL_STATE_DICT")).upper()
    if state_dict_type not in STATE_DICT_TYPES:
        raise ConfigError(
            f"fsdp_config: state_dict_type expects one of {', '.join(STATE_DICT_TYPES)}, got {state_dict_type!r}"
        )
    classes = options.get("transformer_layer_cls_to_wrap")
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    return {
        "version": 2,
        "transformer_layer_cls_to_wrap": list(classes) if classes else None,
        "reshard_after_forward": bool(options.get("reshard_after_forward", True)),
        "state_dict_type": state_dict_type,
        "fsdp": fsdp,
    }


def wrap_classes(model: torch.nn.Module, names: list[str] | None) -> set[str]:
    """Class names of the shard units: `names` found in the model, default its `_no_split_modules`."""
    present = {type(m).__name__ for m in model.modules()}
    if not names:
        names = []
        for module in model.modules():
            names += list(getattr(module, "_no_split_modules", None) or [])
    found = {n for n in names if n in present}
    if not found:
        raise ConfigError(
            f"fsdp_config: transformer_layer_cls_to_wrap {names} names no module of the model "
            f"({type(model).__name__})"
        )
    return found


def shard_model(
    model: torch.nn.Module, classes: set[str], reshard_after_forward: bool = True
) -> torch.nn.Module:
    """`fully_shard` every module whose class is in `classes`, then the root (in place)."""
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if type(module).__name__ in classes:
            fully_shard(module, reshard_after_forward=reshard_after_forward)
    fully_shard(model, reshard_after_forward=reshard_after_forward)
    return model


def is_fsdp2_model(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def has_sharded_parameters(model: torch.nn.Module) -> bool:
    """Whether any parameter is a DTensor (sharded by FSDP2)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


@contextlib.contextmanager
def plain_class(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model with its own class while inside (FSDP2 swaps in a dynamic subclass `FSDP<Name>`)."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(model)
    if not issubclass(cls, FSDPModule):
        yield model
        return
    model.__class__ = next(c for c in cls.__mro__ if not issubclass(c, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = cls


@contextlib.contextmanager
def gathered_root(model: torch.nn.Module | None) -> Iterator[None]:
    """Gather the FSDP2 root unit's own parameters (embedding, final norm, output projection) while inside.

    Code that calls a sharded model's submodules or weights directly (not its `forward`) skips the root's
    all-gather; the decoder layers are their own units and gather in their own forward.
    """
    if model is None or not is_fsdp2_model(model):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def full_model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict in CPU memory on process 0, `{}` on the others; every process must
    call it. Each parameter is all-gathered in turn and only process 0 keeps it (moved to CPU), so no
    process ever holds the gathered model on its accelerator and the others hold none of it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def cast_floating(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """`state` with its floating-point tensors in `dtype` (None: unchanged)."""
    if dtype is None:
        return state
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def write_config_dtype(folder: str | Path, dtype: torch.dtype) -> None:
    """Record `dtype` in a saved folder's config.json (`save_pretrained` writes the parameters' dtype,
    which is float32 for a model trained with an fp32 master copy)."""
    import json

    from ..fileio import atomic_write_text

    path = Path(folder) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["dtype"] = str(dtype).removeprefix("torch.")
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_pretrained_gathered(
    model: torch.nn.Module, output_dir: str | Path, is_main: bool, dtype: torch.dtype | None = None
) -> None:
    """`save_pretrained` of the full model (gathered in CPU memory on process 0), named by its own class;
    `dtype`: the weights and config.json in that dtype (else the parameters' own)."""
    state = full_model_state_dict(model)
    # The gathered copy of a tied weight (lm_head = embed_tokens) is a tensor of its own: save it once,
    # as save_pretrained does for the unsharded model (loading ties it again).
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    state = {k: v for k, v in state.items() if k not in tied}
    if is_main:
        with plain_class(model):
            model.save_pretrained(str(output_dir), state_dict=cast_floating(state, dtype))
        if dtype is not None and (Path(output_dir) / "config.json").is_file():
            write_config_dtype(output_dir, dtype)


def save_sharded(model: torch.nn.Module, optimizer: Any, folder: Path, full: bool, is_main: bool) -> None:
    """Checkpoint model and optimizer: gathered (`full`: optimizer.pt; the model is saved by
    `save_pretrained_gathered`) or one shard per process (`torch.distributed.checkpoint`)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    if full:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_optimizer_state_dict(model, optimizer, options=options)
        if is_main:
            torch.save(state, folder / FULL_OPTIMIZER_FILE)
        return
    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(folder / SHARDED_MODEL_DIR))
    dcp.save(
        {"optimizer": get_optimizer_state_dict(model, optimizer)},
        checkpoint_id=str(folder / SHARDED_OPTIMIZER_DIR),
    )


def load_sharded_model(model: torch.nn.Module, folder: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(model)}
    dcp.load(state, checkpoint_id=str(folder / SHARDED_MODEL_DIR))
    set_model_state_dict(model, state["model"])


def read_full_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a `save_pretrained` folder (one safetensors file or an index of several), in CPU memory."""
    import json

    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name), device="cpu"))
    return state


def has_full_weights(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()


def load_full_model(model: torch.nn.Module, folder: Path) -> None:
    """Load a FULL checkpoint's `save_pretrained` weights into a sharded model: process 0 reads the file,
    and the shards are broadcast from it (the other processes never hold the whole model)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state = read_full_weights(folder) if torch.distributed.get_rank() == 0 else {}
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, state, options=options)


def load_optimizer(model: torch.nn.Module, optimizer: Any, folder: Path) -> None:
    """Restore what `save_sharded` wrote (either format); a gathered `optimizer.pt` is read by process 0
    only and broadcast."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    if (folder / FULL_OPTIMIZER_FILE).is_file():
        state = {}
        if torch.distributed.get_rank() == 0:
            state = torch.load(folder / FULL_OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_optimizer_state_dict(model, optimizer, state, options=options)
        return
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(folder / SHARDED_OPTIMIZER_DIR))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


class Fsdp2TrainerMixin:
    """FSDP2 for a `transformers.Trainer`: the CPU mode (see the module docstring) and complete saves.

    Put it before `Trainer` in the bases. Attributes it reads: `args.cpu_fsdp` (set by the config).
    """

    @property
    def cpu_fsdp(self) -> dict[str, Any] | None:
        return getattr(self.args, "cpu_fsdp", None)

    def uses_fsdp2(self) -> bool:
        return self.cpu_fsdp is not None or bool(getattr(self.accelerator, "is_fsdp2", False))

    def distributed_info(self) -> dict[str, Any]:
        """`{"mode": single | ddp | fsdp | fsdp2, "world_size": N, "sharded_parameters": bool}`."""
        world = int(self.args.world_size)
        if self.uses_fsdp2():
            mode = "fsdp2"
        elif getattr(self, "is_fsdp_enabled", False):
            mode = "fsdp"
        else:
            mode = "ddp" if world > 1 else "single"
        return {"mode": mode, "world_size": world, "sharded_parameters": has_sharded_parameters(self.model)}

    # ------------------------------------------------------------------ sharding (CPU mode)

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        settings = self.cpu_fsdp
        if settings is not None and not is_fsdp2_model(self.model):
            classes = wrap_classes(self.model, settings["transformer_layer_cls_to_wrap"])
            shard_model(self.model, classes, settings["reshard_after_forward"])
            # The Trainer's path for a model that owns its placement and gradient reduction: no DDP wrap.
            self.is_distributed_loading_by_transformers = True
            self.model_wrapped = self.model
        out = super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        if settings is not None and not has_sharded_parameters(self.model):
            raise ConfigError("fsdp: the model's parameters are not sharded (FSDP2 did not apply); stopping")
        return out

    @contextlib.contextmanager
    def _defer_fsdp_gradient_reduction(self):
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    # ------------------------------------------------------------------ saving and loading

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Under FSDP2 a full `save_pretrained` folder gathered on process 0 (checkpoints with a
        SHARDED state dict keep only the config: their weights are the shards); else the Trainer's."""
        if not (is_fsdp2_model(self.model) and self.uses_fsdp2()):
            return super().save_model(output_dir, _internal_call=_internal_call)
        output_dir = output_dir or self.args.output_dir
        is_main = self.args.should_save
        if is_main:
            os.makedirs(output_dir, exist_ok=True)
        if getattr(self, "_saving_sharded_checkpoint", False):
            if is_main:
                with plain_class(self.model):
                    config = getattr(self.model, "config", None)
                    if config is not None:
                        config.save_pretrained(output_dir)
            return
        save_pretrained_gathered(self.model, output_dir, is_main)
        if is_main and self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _sharded_checkpoints(self) -> bool:
        if self.cpu_fsdp is not None:
            return self.cpu_fsdp["state_dict_type"] == "SHARDED_STATE_DICT"
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        return plugin is not None and "SHARDED" in str(plugin.state_dict_type)

    def _save_checkpoint(self, model, trial):
        self._saving_sharded_checkpoint = self.uses_fsdp2() and self._sharded_checkpoints()
        try:
            return super()._save_checkpoint(model, trial)
        finally:
            self._saving_sharded_checkpoint = False

    def _owns_fsdp2_checkpoints(self) -> bool:
        """Whether this project writes and reads the checkpoints (any FSDP2 run: CPU mode or accelerate's):
        FULL writes the model once (`save_model`) and a gathered optimizer; SHARDED one shard per process.
        Accelerate's own FSDP save would write a FULL model a second time (`pytorch_model_fsdp.bin`)."""
        return self.uses_fsdp2() and is_fsdp2_model(self.model)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self._owns_fsdp2_checkpoints():
            return super()._save_optimizer_and_scheduler(output_dir)
        folder = Path(output_dir)
        save_sharded(
            self.model, self.optimizer, folder, not self._sharded_checkpoints(), self.args.should_save
        )
        if self.args.should_save:
            from transformers.trainer import SCHEDULER_NAME

            torch.save(self.lr_scheduler.state_dict(), folder / SCHEDULER_NAME)

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: torch.nn.Module | None = None
    ) -> None:
        folder = Path(resume_from_checkpoint)
        if self.uses_fsdp2() and (folder / SHARDED_MODEL_DIR).is_dir():
            return None  # loaded once the model is sharded, in `_load_optimizer_and_scheduler`
        target = model if model is not None else self.model
        if self.uses_fsdp2() and is_fsdp2_model(target) and has_full_weights(folder):
            return load_full_model(target, folder)  # accelerate's FSDP2: the model is sharded already
        return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or not self._owns_fsdp2_checkpoints():
            return super()._load_optimizer_and_scheduler(checkpoint)
        folder = Path(checkpoint)
        if (folder / SHARDED_MODEL_DIR).is_dir():
            load_sharded_model(self.model, folder)
        load_optimizer(self.model, self.optimizer, folder)
        from transformers.trainer import SCHEDULER_NAME

        self.lr_scheduler.load_state_dict(torch.load(folder / SCHEDULER_NAME, weights_only=True))

    # ------------------------------------------------------------------ the final model

    def save_final_model(self, output_dir: str, keep_training_dtype: bool = True) -> None:
        """The run's final `save_pretrained` folder; with `keep_training_dtype`, its weights and config.json
        in the dtype the run computed in (`training_dtype`; else the parameters' own). Under FSDP2 the
        weights are gathered in CPU memory on process 0 only."""
        precision = str(getattr(self.accelerator, "mixed_precision", "no"))
        dtype = training_dtype(self.args, precision) if keep_training_dtype else None
        if dtype is None:
            return self.save_model(output_dir, _internal_call=True)
        if is_fsdp2_model(self.model) and self.uses_fsdp2():
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
            save_pretrained_gathered(self.model, output_dir, self.args.should_save, dtype)
        elif self.args.should_save:
            model = self.accelerator.unwrap_model(self.model)
            state = cast_floating({k: v.detach().cpu() for k, v in model.state_dict().items()}, dtype)
            model.save_pretrained(output_dir, state_dict=state)
            write_config_dtype(output_dir, dtype)
        if self.args.should_save and self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        return None


def training_dtype(args: Any, accelerator_precision: str | None = None) -> torch.dtype | None:
    """The dtype a run computed in (`bf16`/`fp16` mixed precision, from the training arguments or from
    the accelerate config, e.g. `mixed_precision: bf16` in accelerate_configs/fsdp_4xa100.yaml), which its
    final folder keeps; None when it trained in its parameters' own dtype."""
    if getattr(args, "bf16", False) or accelerator_precision == "bf16":
        return torch.bfloat16
    if getattr(args, "fp16", False) or accelerator_precision == "fp16":
        return torch.float16
    return None


def destroy_process_group() -> None:
    """End the default process group, if one is up (clean exit of every process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
