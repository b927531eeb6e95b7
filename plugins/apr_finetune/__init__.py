"""apr finetune: LoRA, QLoRA and full fine-tuning on the shared training loop, peft adapter
directories in and out, and ``--adapter DIR --merge``."""
