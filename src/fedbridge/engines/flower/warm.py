"""A long-lived ClientApp process for a SuperNode started with `--isolation process`.

Flower's own SuperExec starts a fresh `flwr-clientapp` process for every message, which imports
Python, torch, Flower and the App again and reads the client's data again: seconds per message.
This process does the SuperExec's job for one SuperNode (it asks the node's Runtime API for the
next task every POLL_SECONDS) and runs each task as `flwr-clientapp` would, with Flower's own
functions, but in itself: each App bundle (FAB) is installed and its ClientApp loaded once, so
what the App keeps in memory (fedbridge's client data) is ready for the next message. It exits
when the SuperNode does.

    python -m fedbridge.engines.flower.warm --runtime-api-address 127.0.0.1:PORT --parent-pid PID
"""

import argparse
import time
from logging import ERROR

from flwr.app import Error, Message
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore import log
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

# the SuperNode itself asks the SuperLink for messages every 3 s (fixed in Flower 1.41); asking
# the node's own Runtime API, on the same machine, 20 times a second costs nothing measurable
POLL_SECONDS = 0.05


def _client(address: str, *interceptors) -> RuntimeHttpClient:
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), *interceptors],
        retry_invoker=make_simple_http_retry_invoker(),
    )


def run_task(address: str, token: str, apps: dict[str, ClientApp]) -> None:
    """One task, as Flower's run_clientapp does it, with the ClientApp of an already seen FAB reused."""
    client = _client(address, RuntimeTokenHttpInterceptor(token))
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context, status, details = None, SubStatus.FAILED, "ClientApp task failed"
    try:
        message, context, run, fab = pull_task_input(client)
        reply = None
        try:
            if fab.hash_str not in apps:
                install_from_fab(fab.content, skip_prompt=True)
                load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
                apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
            reply = apps[fab.hash_str](message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as e:  # noqa: BLE001 - the App's failure goes back to the server, as flwr-clientapp sends it
            log(ERROR, "ClientApp raised an exception", exc_info=e)
            details = f"{type(e)}:<'{e}'>"
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
        push_message(client, reply, context)
    finally:
        push_task_output(client=client, context=context, sub_status=status, details=details)
        heartbeat.stop()
        client.close()


def serve(address: str) -> None:
    """Run the node's ClientApp tasks, one at a time, for as long as this process lives."""
    runtime = _client(address)
    apps: dict[str, ClientApp] = {}
    while True:
        acquired = runtime.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        if acquired.HasField("task") and acquired.token:
            try:
                run_task(address, acquired.token, apps)
            except Exception as e:  # noqa: BLE001 - a task the node could not hand over; the next one may work
                log(ERROR, "task %d could not be run: %s", acquired.task.task_id, e)
        else:
            time.sleep(POLL_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's --host:--port")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) exits")
    args = parser.parse_args()
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    serve(args.runtime_api_address)


if __name__ == "__main__":
    main()
