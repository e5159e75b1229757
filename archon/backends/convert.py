"""Turn a GGUF file into a Hugging Face folder that vLLM can load.

vLLM on CPU cannot run GGUF weights (its dequant kernels need CUDA), so the embedded
Gemma 3 270M is converted once: transformers + gguf dequantise it, and the folder gets
config, tokenizer, bf16 safetensors and a chat template (the GGUF has none). A marker
file records the source's size and sha256, so a second call returns at once and a
changed source is converted again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from archon.errors import BackendError, ConfigError

MARKER = ".archon-convert.json"
EMBEDDED_HF_NAME = "gemma-3-270m-hf"
CONVERT_PIP = "pip install transformers gguf accelerate torch (or: pip install 'archon[cpu]')"

# Gemma's turn format. Gemma has no system role: system text is folded into the first
# user turn, as Google's own template does. The template emits the BOS token itself, so
# prompts rendered with it must be tokenized without adding special tokens again.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set ns = namespace(system='', first=true) -%}"
    "{%- for m in messages if m['role'] == 'system' -%}"
    "{%- set ns.system = ns.system + ('\\n\\n' if ns.system else '') + m['content'] -%}"
    "{%- endfor -%}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{%- set role = 'model' if m['role'] == 'assistant' else 'user' -%}"
    "{%- set content = m['content'] -%}"
    "{%- if role == 'user' and ns.first and ns.system -%}"
    "{%- set content = ns.system + '\\n\\n' + content -%}"
    "{%- set ns.first = false -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + content + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

# Files a finished conversion must hold besides the weights.
_REQUIRED = ("config.json", "tokenizer_config.json", "chat_template.jinja", MARKER)


def cache_root() -> Path:
    """archon's own cache: $ARCHON_CACHE_DIR, else $XDG_CACHE_HOME/archon, else ~/.cache/archon."""
    if env := os.environ.get("ARCHON_CACHE_DIR"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "archon"


def default_converted_dir() -> Path:
    """Where the embedded model's HF conversion lives."""
    return cache_root() / "models" / EMBEDDED_HF_NAME


def _fingerprint(src: Path) -> dict[str, str | int]:
    digest = hashlib.sha256()
    with src.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return {"source": src.name, "size": src.stat().st_size, "sha256": digest.hexdigest()}


def is_converted(dest: Path, src: Path | None = None) -> bool:
    """True when ``dest`` holds a finished conversion (of ``src``, if given)."""
    if not all((dest / name).is_file() for name in _REQUIRED) or not any(dest.glob("*.safetensors")):
        return False
    if src is None:
        return True
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return False
    # Size first: it is free, and hashing a 250 MB file is not.
    if marker.get("size") != src.stat().st_size:
        return False
    return marker.get("sha256") == _fingerprint(src)["sha256"]


def convert_gguf_to_hf(src: Path, dest: Path, *, chat_template: str | None = None) -> Path:
    """Write a Hugging Face folder for the GGUF ``src`` into ``dest`` and return ``dest``.

    ``chat_template`` overrides the model's; a Gemma model without one gets Gemma's turn
    format. The folder is built next to ``dest`` and renamed into place, so an
    interrupted conversion never looks finished. Takes about 70 s for Gemma 3 270M.
    """
    src, dest = Path(src).expanduser(), Path(dest).expanduser()
    if not src.is_file():
        raise ConfigError(f"GGUF file not found: {src}", hint="pass the path of an existing .gguf file")
    if is_converted(dest, src):
        return dest
    if dest.exists() and any(dest.iterdir()) and not (dest / MARKER).exists():
        raise ConfigError(f"{dest} exists and is not an archon conversion; refusing to overwrite it",
                          hint="choose an empty or new destination folder")
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise BackendError(f"converting a GGUF needs transformers, gguf and torch ({exc}); run: {CONVERT_PIP}") from exc
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError as exc:
        raise BackendError(f"converting a GGUF needs the `gguf` package; run: {CONVERT_PIP}") from exc

    fingerprint = _fingerprint(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(
            src.parent, gguf_file=src.name, dtype=torch.bfloat16, **_dequantize_kwargs())
        # The weights are now plain bf16 tensors. A leftover GGUF quantizer makes
        # save_pretrained refuse, and a leftover quantization_config would make vLLM
        # look for GGUF kernels.
        model.hf_quantizer = None
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        template = chat_template or tokenizer.chat_template
        if template is None and getattr(model.config, "model_type", "").startswith("gemma"):
            template = GEMMA_CHAT_TEMPLATE
            _stop_at_end_of_turn(model, tokenizer)
        if template is None:
            raise ConfigError(f"{src.name} has no chat template and is not a Gemma model",
                              hint="pass chat_template= (a Jinja template) to the conversion")
        tokenizer.chat_template = template
        model.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        _write_template(work, template)
        (work / MARKER).write_text(json.dumps(fingerprint, indent=2) + "\n")
        del model
        _make_readable(work)
        if dest.exists():
            shutil.rmtree(dest)
        work.rename(dest)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return dest


def _write_template(folder: Path, template: str) -> None:
    """Store the chat template both ways readers look for it.

    transformers 5 and vLLM read ``chat_template.jinja``; transformers 4 reads the
    ``chat_template`` key of ``tokenizer_config.json``.
    """
    (folder / "chat_template.jinja").write_text(template)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    if config.get("chat_template") != template:
        config["chat_template"] = template
        config_path.write_text(json.dumps(config, indent=2) + "\n")


def _make_readable(folder: Path) -> None:
    """mkdtemp and some writers create owner-only files; give them the usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _dequantize_kwargs() -> dict[str, object]:
    """Ask transformers for dense weights.

    transformers 5 keeps GGUF weights packed (and unsaveable) unless told to unpack
    them; older versions always unpack and have no ``GgufConfig``.
    """
    try:
        from transformers.utils.quantization_config import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _stop_at_end_of_turn(model: object, tokenizer: object) -> None:
    """Make ``<end_of_turn>`` an end-of-sequence token, so chat answers stop after one turn.

    vLLM adds the generation config's eos ids to every request's stop tokens.
    """
    end = tokenizer.convert_tokens_to_ids("<end_of_turn>")  # type: ignore[attr-defined]
    if not isinstance(end, int) or end == getattr(tokenizer, "unk_token_id", None):
        return
    gen = getattr(model, "generation_config", None)
    if gen is None:
        return
    eos = gen.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if end not in ids:
        gen.eos_token_id = [*ids, end]


def ensure_embedded_hf(dest: Path | None = None) -> Path:
    """The embedded GGUF converted for vLLM, converting it on first use only."""
    from archon.backends.registry import resolve_embedded_path

    return convert_gguf_to_hf(resolve_embedded_path(), dest or default_converted_dir())
