#!/usr/bin/env python3
"""A private RabbitMQ node for Molecule scenarios (guest_ha_dev.testing.rabbitmq).

    rabbit_node.py start STATE.json   # start a node, write its facts, leave it running
    rabbit_node.py stop STATE.json    # stop the node named in STATE.json, remove its data

The node never touches the machine's own RabbitMQ: its own name, ports and data
folder (see dev/guest_ha_dev/testing/rabbitmq.py). Run it with the project venv's Python.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

from guest_ha_dev.testing.rabbitmq import RabbitMQNode


def start(state: str) -> int:
    if os.path.exists(state):
        with open(state, encoding="utf-8") as fh:
            facts = json.load(fh)
        node = _node(facts)
        if node.is_running():
            print(json.dumps(facts))
            return 0
        stop(state)
    # Under /tmp: the node runs as the rabbitmq user, which cannot enter /root.
    node = RabbitMQNode(base_dir=tempfile.mkdtemp(prefix="gha-molecule-rmq-"))
    node.start()
    facts = {
        "node": node.node_name,
        "amqp_port": node.amqp_port,
        "dist_port": node.dist_port,
        "data_dir": str(node.data_dir),
        "url": node.url,
        "host": "127.0.0.1",
    }
    os.makedirs(os.path.dirname(os.path.abspath(state)), exist_ok=True)
    with open(state, "w", encoding="utf-8") as fh:
        json.dump(facts, fh)
    print(json.dumps(facts))
    return 0


def _node(facts: dict) -> RabbitMQNode:
    node = RabbitMQNode(base_dir=facts["data_dir"])
    node.node_name = facts["node"]
    node.amqp_port = facts["amqp_port"]
    node.dist_port = facts["dist_port"]
    node._started = True
    return node


def stop(state: str) -> int:
    if not os.path.exists(state):
        print("no node")
        return 0
    with open(state, encoding="utf-8") as fh:
        facts = json.load(fh)
    _node(facts).stop()
    shutil.rmtree(facts["data_dir"], ignore_errors=True)
    os.unlink(state)
    print("stopped " + facts["node"])
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit(__doc__)
    sys.exit(start(sys.argv[2]) if sys.argv[1] == "start" else stop(sys.argv[2]))
