"""A 3-node NATS cluster on loopback ports, and the chaos suite's stack on it.

Started the way nats.py's own cluster tests do (free ports, full-mesh routes, one store folder per
node, ``server_name`` per node, JetStream clustered under one cluster name), with the same
``infra/nats.conf`` and users as one server. Each process lists every node, its own first, so the
services spread over the nodes and move to another when theirs dies; streams are created with the
replicas the contracts ask for (``SB_STREAM_REPLICAS=3``).
"""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from contracts.streams import StreamSpec
from contracts.subjects import DEFAULT_PREFIX
from ops import access
from ops.servers import RunningServer, find_binary, free_port, start_chroma, wait_for_port
from ops.stack import NATS_CONF
from tests.chaos.harness import Stack, StackError, service_of
from workers.runtime.provision import stream_name

NODES = 3
CLUSTER = "switchboard"
#: Which node each service talks to first (the others are its fallbacks).
HOME_NODE = {
    **{"edge": 0, "edge#2": 1, "orchestrator": 1, "orchestrator#2": 2, "memory": 2, "stats": 0, "voice": 1},
    **{"transcriber": 2, "transcriber#2": 0},
}


@dataclass
class Node:
    index: int
    client_port: int = field(default_factory=free_port)
    route_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def name(self) -> str:
        return f"node-{self.index}"


@dataclass
class ClusterStack(Stack):
    nodes: list[Node] = field(default_factory=lambda: [Node(i) for i in range(NODES)])
    chroma: RunningServer | None = None

    async def start(self) -> None:
        await super().start()
        # The retriever in server mode (`chroma run`): replicas share one index, which no NATS node holds.
        self.chroma = await asyncio.to_thread(start_chroma, self.base / "chroma", None, self.logs / "chroma.log")

    @property
    def nats_url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def urls_from(self, first: int) -> str:
        order = self.nodes[first:] + self.nodes[:first]
        return ",".join(node.url for node in order)

    def env_for(self, name: str) -> dict[str, str]:
        env = super().env_for(name)
        if service_of(name) == "retriever" and self.chroma is not None:
            env["SB_RETRIEVER_CHROMA_URL"] = self.chroma.url
        return env | {"SB_NATS_URL": self.urls_from(HOME_NODE.get(name, 0)), "SB_STREAM_REPLICAS": str(NODES)}

    def _start_nats(self) -> None:  # type: ignore[override]  # the cluster has no single server
        config = access.server_config(NATS_CONF, self.bus_users, prefixes=(DEFAULT_PREFIX,))
        for node in self.nodes:
            self._spawn_node(node, config)
        for node in self.nodes:
            assert node.process is not None
            wait_for_port("127.0.0.1", node.client_port, 15.0, node.process)

    def _spawn_node(self, node: Node, config: Path) -> None:
        routes = ",".join(f"nats://127.0.0.1:{n.route_port}" for n in self.nodes if n is not node)
        command = [
            find_binary("nats-server"),
            *("-c", str(config), "-js", "-a", "127.0.0.1", "-p", str(node.client_port)),
            *("-sd", str(self.base / node.name), "-n", node.name, "--cluster_name", CLUSTER),
            *("--cluster", f"nats://127.0.0.1:{node.route_port}", "--routes", routes),
        ]
        log = (self.logs / f"{node.name}.log").open("ab")
        node.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    async def leader_of(self, spec: StreamSpec) -> int:
        """The index of the node leading the stream (JetStream's RAFT leader for it)."""
        info = await self.nc.jetstream().stream_info(stream_name(spec))
        leader = info.cluster.leader if info.cluster else None
        return next(node.index for node in self.nodes if node.name == leader)

    async def kill_node(self, index: int) -> None:
        """SIGKILL: the node vanishes mid-conversation, with whatever it had not written."""
        node = self.nodes[index]
        if node.process is None or node.process.poll() is not None:
            raise StackError(f"{node.name} is not running")
        node.process.kill()
        await asyncio.to_thread(node.process.wait, 10)

    async def start_node(self, index: int) -> None:
        """The same node again: same ports, same store; it catches up with the others."""
        node = self.nodes[index]
        self._spawn_node(node, access.server_config(NATS_CONF, self.bus_users, prefixes=(DEFAULT_PREFIX,)))
        assert node.process is not None
        await asyncio.to_thread(wait_for_port, "127.0.0.1", node.client_port, 15.0, node.process)

    async def close(self) -> None:
        await super().close()
        if self.chroma is not None:
            await asyncio.to_thread(self.chroma.stop)
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
                await asyncio.to_thread(node.process.wait, 10)
