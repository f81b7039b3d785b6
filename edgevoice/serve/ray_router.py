"""Route each new conversation to the Ray Serve replica with the most room.

Ray Serve's default router compares two replicas drawn at random. For short requests that is
enough; for conversations it is not: with three replicas where two are at their session cap and
one is empty, a draw of the two full ones would send the new conversation to a replica that
refuses it (1013) while another has room. This router ranks *all* replicas as one group, and Ray
then picks the one with the fewest ongoing requests (conversations) among those below
``max_ongoing_requests``. Probing every replica costs one small call per replica per new
conversation, which is nothing next to a conversation's length; replica counts here are GPUs.
"""

from __future__ import annotations

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica


class MostRoomRouter(FIFOMixin, RequestRouter):
    """All replicas in one rank: Ray chooses the least loaded one that has room; conversations
    waiting for a replica are routed in the order they came (FIFOMixin)."""

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        return [list(candidate_replicas)] if candidate_replicas else []
