"""Tiny models and adapters for the engine tests, made here: a transformers
config with random weights, a tokenizer trained on a few words, PEFT adapters
with random (not zero) B.  Nothing comes from a hub."""
from __future__ import annotations

from pathlib import Path

# vLLM's CPU attention refuses a head_dim of 16: 64, two heads, one KV head (GQA).
LLAMA = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=2, num_key_value_heads=1, head_dim=64,
             max_position_embeddings=256, tie_word_embeddings=False)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly "
         "brew potent elixirs under a pale green moon").split()


def make_tokenizer(path: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=LLAMA["vocab_size"],
                                  special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator([" ".join(WORDS)] * 50, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    fast.save_pretrained(path)
    return fast


def make_base(path: Path, seed: int = 0) -> Path:
    """A random two-layer Llama with a tokenizer, saved in float32."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(bos_token_id=1, eos_token_id=2, **LLAMA)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(path)
    make_tokenizer(path)
    return path


def make_adapter(base: Path, path: Path, seed: int, dtype: str = "F32", **lora) -> Path:
    """A PEFT LoRA of base with random A and B (init_lora_weights=False),
    scaled so that its outputs differ clearly from the base model's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = dict(r=8, lora_alpha=16, target_modules=ALL_LINEAR, init_lora_weights=False)
    cfg.update(lora)
    pm = get_peft_model(model, LoraConfig(**cfg))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.mul_(4.0)
    if dtype == "BF16":
        pm = pm.to(torch.bfloat16)
    pm.save_pretrained(path)
    return path
