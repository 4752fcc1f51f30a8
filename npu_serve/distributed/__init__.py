"""Tensor parallelism over torch.distributed: one engine over N devices, on one node or several.

topology.py (who is who), group.py (rendezvous, process groups, the message channel), sharding.py
(how a model splits, which models do), executor.py (rank 0: broadcast each step, watch the ranks),
worker.py (every other rank's loop), node.py (a compute-only node of a multi-node engine).
"""
