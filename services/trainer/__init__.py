"""The trainer: GRPO, DAPO and VAPO on torch.distributed."""
