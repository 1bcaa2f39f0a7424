"""`edgekit generate`: a language model's greedy answer to a prompt, printed, to eyeball quality."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli._common import JsonFlag, console, err_console, print_json


def generate_cmd(
    model: Annotated[str, typer.Argument(help="A language model: an .onnx edgekit made (tokenizer.json beside it), "
                                              "a Hugging Face folder or a .gguf file (exported first).")],
    prompt: Annotated[str, typer.Argument(help="The text to continue (or, with --chat, the user's message).")],
    new_tokens: Annotated[int, typer.Option("--new-tokens", "-n", min=1, help="Tokens to generate at most.")] = 64,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt in ChatML turns (instruction-tuned models).")] = False,
    threads: Annotated[int, typer.Option("--threads", min=0, help="Intra-op threads (0: the runtime's default).")] = 0,
    json: JsonFlag = False,
) -> None:
    """Generate greedily from MODEL after PROMPT with the device's own code (ONNX Runtime and
    numpy, a KV cache sized to the prompt and answer) and print the text."""
    from edgekit.device.lm_generate import GenerateError, generate_text
    from edgekit.errors import ConfigError
    from edgekit.toolchains import TOOLCHAINS

    lm = TOOLCHAINS["lm"]
    with tempfile.TemporaryDirectory(prefix="edgekit-generate-") as tmp:
        path = lm.load(model, workdir=Path(tmp), on_step=lambda *_: err_console.print("exporting to ONNX first"))
        try:
            result = generate_text(str(path), prompt, new_tokens, chat=chat, threads=threads,
                                   positions=lm.model_context(path))
        except GenerateError as exc:
            raise ConfigError(str(exc)) from exc
    result["model"] = model
    if json:
        print_json(result)
        return
    console.print(result["text"], markup=False, highlight=False, soft_wrap=True)
    rate = result["decode_tokens_per_s"]
    err_console.print(f"{result['tokens']} tokens after a {result['prompt_tokens']}-token prompt; first token "
                      f"{result['ttft_ms']:.0f} ms" + (f", then {rate:.1f} tokens/s" if rate else ""), highlight=False)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_cmd)
