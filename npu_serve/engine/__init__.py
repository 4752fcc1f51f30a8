"""The torch-free half: requests, block bookkeeping, scheduling, detokenizing, the engine loop."""
