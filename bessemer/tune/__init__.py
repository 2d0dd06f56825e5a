"""Fine-tuning methods applied from outside the model: LoRA adapters, PEFT adapter folders, DPO."""
