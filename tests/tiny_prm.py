"""Writes a tiny, randomly initialised process reward model that vLLM serves as a PRM.

No trained PRM can be downloaded here, so the tests build one of Qwen2.5-Math-PRM's
architecture (``Qwen2ForProcessRewardModel``: a Qwen2 decoder and a two-class head read at
every ``<extra_0>`` step tag) at toy size: hidden size 64, 2 layers, 2 heads of 32 (a head
size vLLM's CPU attention supports), a byte-level BPE tokenizer trained on a few sentences,
with ``<extra_0>`` and the Qwen chat-template tokens as single special tokens. Its scores
are meaningless; shape, step count, determinism and batching are what the tests check.
"""

from __future__ import annotations

import json
from pathlib import Path

STEP_TAG = "<extra_0>"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", STEP_TAG]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_prm(dest: Path, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2Model

    dest.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["What is 3 + 4? Step one: add the numbers. So 3 + 4 = 7. The answer is \\boxed{7}.",
              "Please reason step by step, and put your final answer within \\boxed{}.",
              "system user assistant first second third step answer question solution"] * 4
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=[STEP_TAG, "<|im_start|>"])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(dest)

    vocab = 512
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         tie_word_embeddings=False, num_labels=2, torch_dtype="float32",
                         eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=fast.convert_tokens_to_ids("<|endoftext|>"))
    torch.manual_seed(seed)
    body = Qwen2Model(config)
    state = {f"model.{k}": v.detach().clone().contiguous() for k, v in body.state_dict().items()}
    head = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    state.update({f"score.{k}": v.detach().clone().contiguous() for k, v in head.state_dict().items()})
    save_file(state, str(dest / "model.safetensors"), metadata={"format": "pt"})
    data = config.to_dict()
    data["architectures"] = ["Qwen2ForProcessRewardModel"]
    data.pop("quantization_config", None)
    (dest / "config.json").write_text(json.dumps(data, indent=2))
    return dest


if __name__ == "__main__":  # pragma: no cover - manual use: python tests/tiny_prm.py DEST
    import sys

    print(write_tiny_prm(Path(sys.argv[1])))
