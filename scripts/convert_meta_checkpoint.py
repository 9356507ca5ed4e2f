"""Convert Meta's multi-token-prediction checkpoint (e.g. 7B_1T_4) into a HuggingFace folder.

    python scripts/convert_meta_checkpoint.py --input-dir 7B_1T_4 --output-dir wmtp-7b \
        --tokenizer tokenizer.model --dtype bfloat16

The output loads with `AutoModelForCausalLM.from_pretrained(OUT)` after `import wmtp_hf`, or with
`trust_remote_code=True` without it.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

from wmtp_hf.convert_meta import DTYPES, ConversionError, convert_meta_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-dir", required=True, help="folder with consolidated.pth and params.json")
    parser.add_argument("--output-dir", required=True, help="new folder for the HF checkpoint")
    parser.add_argument("--tokenizer", default=None, help="Meta's sentencepiece tokenizer.model (optional)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: keep the checkpoint's"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = convert_meta_checkpoint(args.input_dir, args.output_dir, args.tokenizer, args.dtype)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"converted to {out} in {time.perf_counter() - start:.1f}s (peak RSS {peak_gb:.2f} GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
