"""Flower's minimal round (benchmarks.deploy's floor): push a 100k-float array to every node,
poll for the replies every 0.1 s as fedbridge's ServerApp does, the ClientApp returns its input."""

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

POLL_SECONDS = 0.1
PATIENCE = 120.0  # seconds a round may take before the benchmark gives up
server = ServerApp()
client = ClientApp()


@client.train()
def echo(message: Message, context: Context) -> Message:
    return Message(RecordDict({"arrays": message.content["arrays"]}), reply_to=message)


@server.main()
def main(grid: Grid, context: Context) -> None:
    rounds, nodes, out = int(context.run_config["rounds"]), int(context.run_config["nodes"]), context.run_config["out"]
    deadline = time.monotonic() + PATIENCE
    while len(ids := list(grid.get_node_ids())) < nodes and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    array = ArrayRecord([np.zeros(100_000, dtype=np.float32)])
    seconds = []
    for r in range(1, rounds + 1):
        began = time.monotonic()
        messages = [Message(RecordDict({"arrays": array}), dst_node_id=n, message_type="train", group_id=str(r))
                    for n in ids]
        pending = set(grid.push_messages(messages))
        while pending and time.monotonic() < began + PATIENCE:
            pending -= {m.metadata.reply_to_message_id for m in grid.pull_messages(list(pending))}
            if pending:
                time.sleep(POLL_SECONDS)
        if pending:
            raise RuntimeError(f"round {r}: {len(pending)} nodes did not answer within {PATIENCE:.0f} s")
        seconds.append(time.monotonic() - began)
    Path(str(out)).write_text(json.dumps(seconds))
