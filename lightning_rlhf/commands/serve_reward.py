"""``lightning-rlhf serve-reward``: serve one reward source over HTTP, for ``RemoteReward``
(the server is ``lightning_rlhf.rewards.serve``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from lightning_rlhf.rewards.serve import TOKEN_ENV, RewardServer
from lightning_rlhf.rewards.spec import SHORTHANDS, load_reward_source

log = logging.getLogger(__name__)


def serve_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lightning-rlhf serve-reward",
        description="Serve one reward source over HTTP (POST /score, GET /health) for RemoteReward.",
    )
    parser.add_argument("--reward", required=True, help=f"the reward source: {SHORTHANDS}")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one, printed on start)")
    parser.add_argument("--token-env", default=TOKEN_ENV,
                        help=f"environment variable holding the shared token requests must carry (default: {TOKEN_ENV}; "
                             "unset: no token)")
    parser.add_argument("--max-request-bytes", type=int, default=8 * 2**20, help="largest request body (default: 8 MiB)")
    parser.add_argument("--max-batch", type=int, default=1024, help="most rows in one request (default: 1024)")
    args = parser.parse_args(argv)
    if args.max_request_bytes <= 0 or args.max_batch <= 0:
        parser.error("--max-request-bytes and --max-batch must be positive")
    token = os.environ.get(args.token_env) or None
    if token is None and args.token_env != TOKEN_ENV:
        parser.error(f"--token-env names {args.token_env}, which is not set")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    source = load_reward_source(args.reward)
    try:
        server = RewardServer(source, args.reward, args.host, args.port, token, args.max_request_bytes, args.max_batch)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without a token: anyone who can reach this port can use the reward", args.host)

    def stop(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, stop)  # a scheduler's SIGTERM shuts down as Ctrl-C does
        print(f"serving {args.reward} on {server.url}", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("stopped", flush=True)
    return 0
