"""A run with push_to_hub on 2 CPU processes (DDP, gloo) whose upload outlasts the process group's timeout
(tests/train/test_push_distributed.py): `torchrun --nproc_per_node 2 tests/helpers/hub_push_worker.py OUT SLOW_S
TIMEOUT_S ARGS...`. The group is created here with TIMEOUT_S (on CPU transformers does not pass
`ddp_timeout` to it; on GPUs it does), and the run uses it.

The Hub is faked in-process (`HfApi.create_repo` / `create_commit`; the commit sleeps SLOW_S seconds). At the
end a control barrier, with process 0 late by SLOW_S, shows that a barrier under this timeout does fail.
Writes `OUT/push_rank{r}.json`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
from huggingface_hub import CommitInfo, HfApi, RepoUrl

from wmtp_hf.train.cli import main


def fake_hub(out: Path, slow_s: float) -> None:
    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, *, commit_message, **kwargs):
        start = time.time()
        time.sleep(slow_s)
        (out / "commit.json").write_text(json.dumps({"repo_id": repo_id, "files": sorted(o.path_in_repo for o in operations),
                                                     "start": start, "end": time.time()}))  # fmt: skip
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message=commit_message,
                          commit_description="", oid="0" * 40)  # fmt: skip

    HfApi.create_repo, HfApi.create_commit = create_repo, create_commit


def control_barrier(slow_s: float) -> str:
    if dist.get_rank() == 0:
        time.sleep(slow_s)
    try:
        dist.barrier()
    except Exception as err:  # the gloo timeout
        return f"failed: {type(err).__name__}"
    return "passed"


def main_worker() -> None:
    out, slow_s, timeout_s, argv = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
    dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    fake_hub(out, slow_s)
    original = dist.destroy_process_group
    dist.destroy_process_group = lambda *a, **k: None  # keep the group for the control barrier
    code = main(argv)
    finished = time.time()
    control = control_barrier(slow_s) if dist.is_initialized() else "no group"
    rank = int(os.environ["RANK"])
    (out / f"push_rank{rank}.json").write_text(
        json.dumps({"code": code, "finished": finished, "control": control})
    )
    dist.destroy_process_group = original
    os._exit(0)  # the group is broken by the control barrier's timeout: leave without its teardown


if __name__ == "__main__":
    main_worker()
