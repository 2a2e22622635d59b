"""The rollout server: streaming generation and verifiers."""
