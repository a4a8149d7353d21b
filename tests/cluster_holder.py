"""A stand-in route process for the cluster store tests: joins the store, adds
a node, a serve and a session, says "ready", then keeps its lease alive until
it is killed (the tests kill it with SIGKILL, as a crashed route).

    python -m tests.cluster_holder HOST:PORT ROUTE_ID TTL RESUME_TTL
"""

from __future__ import annotations

import asyncio
import sys

from vnet.cluster.etcd import EtcdAccess, EtcdEndpoint
from vnet.cluster.store import ClusterStore
from vnet.core.cluster_keys import SessionRecord


async def main(endpoint: str, route_id: str, ttl: int, resume_ttl: int) -> None:
    host, _, port = endpoint.rpartition(":")
    access = EtcdAccess((EtcdEndpoint(host, int(port)),))
    store = ClusterStore(access, route_id, "127.0.0.1:1", lease_ttl=ttl, resume_ttl=resume_ttl)
    await store.start()
    vnet = await store.add_vnet("holder-node", "g")
    reg = await store.register(vnet, 0, "ssh", "127.0.0.1", 22)
    await store.save_session("resume-secret", SessionRecord(vnet, (reg.serve.serveid,)))
    print(f"ready vnetid={vnet.vnetid} serveid={reg.serve.serveid}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
