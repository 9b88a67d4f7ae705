"""The server of ``lightning-rlhf serve-reward`` (the command is ``commands.serve_reward``): one
reward source over HTTP, for ``RemoteReward``.

``POST /score`` takes ``{"prompts": [...], "completions": [...], "columns": [{...}, ...],
"request_id": "..."}`` (columns and request_id optional) and answers ``{"scores": [...]}``,
a score the reward could not give as null. ``GET /health`` answers ``{"status": "ok",
"reward": SPEC}``. Errors are ``{"error": "..."}`` with a 4xx or 5xx status.

Safe by default: it listens on 127.0.0.1 only; with a token in the environment
(``LIGHTNING_RLHF_REWARD_TOKEN``, or the variable ``--token-env`` names) every request,
``/health`` included, needs ``Authorization: Bearer <token>``; a request's size and batch
are bounded. Nothing in a request selects code or a file: the server only ever runs the
reward it was started with.

Reward models and most reward functions are not thread-safe, so one lock serialises
scoring (the threads only overlap reading and writing sockets). The answers to the last
few hundred request ids are kept, so a client's retry of a request that did reach the
server is answered again rather than scored twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NoReturn

from lightning_rlhf.rewards.base import RewardSource

log = logging.getLogger(__name__)

TOKEN_ENV = "LIGHTNING_RLHF_REWARD_TOKEN"
REMEMBERED_ANSWERS = 256


class RequestError(Exception):
    """A request refused with ``status``; ``message`` is sent back as ``{"error": ...}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class RewardServer(ThreadingHTTPServer):
    """One reward source behind ``/score`` and ``/health``."""

    daemon_threads = True  # a client that hangs up mid-request does not keep the process alive

    def __init__(
        self, source: RewardSource, spec: str, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
        max_request_bytes: int = 8 * 2**20, max_batch: int = 1024,
    ):
        super().__init__((host, port), RewardRequestHandler)
        self.source, self.spec, self.token = source, spec, token or None
        self.max_request_bytes, self.max_batch = max_request_bytes, max_batch
        self.scoring = threading.Lock()
        self.answers: OrderedDict[str, tuple[str, bytes]] = OrderedDict()  # request_id -> (body digest, answer)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def answer(self, body: bytes) -> bytes:
        """The JSON answer to a ``/score`` body, from memory when its request id was seen."""
        prompts, completions, columns, request_id = parse_score_request(body, self.max_batch)
        digest = hashlib.sha256(body).hexdigest()
        with self.scoring:
            if request_id is not None and request_id in self.answers:
                seen_digest, answer = self.answers[request_id]
                if seen_digest != digest:
                    raise RequestError(409, f"request_id {request_id!r} was already used for a different request")
                self.answers.move_to_end(request_id)
                return answer
            try:
                scores = self.source(prompts, completions, columns).tolist() if prompts else []
            except Exception as e:
                log.exception("the reward source failed")
                raise RequestError(500, f"the reward source failed: {type(e).__name__}: {e}") from None
            if any(math.isinf(s) for s in scores):
                raise RequestError(500, "the reward source gave an infinite score, which JSON cannot carry")
            answer = _json({"scores": [None if math.isnan(s) else s for s in scores]})
            if request_id is not None:
                self.answers[request_id] = (digest, answer)
                if len(self.answers) > REMEMBERED_ANSWERS:
                    self.answers.popitem(last=False)
            return answer


def parse_score_request(body: bytes, max_batch: int) -> tuple[list[str], list[str], list[dict] | None, str | None]:
    """``(prompts, completions, columns, request_id)`` of a ``/score`` body, or a RequestError."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, or nested past the parser's depth
        raise RequestError(400, f"the body is not JSON: {e}") from None
    if not isinstance(request, dict):
        raise RequestError(400, "the body must be a JSON object with 'prompts' and 'completions'")
    unknown = set(request) - {"prompts", "completions", "columns", "request_id"}
    if unknown:
        raise RequestError(400, f"unknown field(s) {sorted(unknown)}; expected prompts, completions, columns, request_id")
    texts = {}
    for field in ("prompts", "completions"):
        value = request.get(field)
        if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
            raise RequestError(400, f"'{field}' must be a list of strings")
        texts[field] = value
    prompts, completions = texts["prompts"], texts["completions"]
    if len(prompts) != len(completions):
        raise RequestError(400, f"{len(prompts)} prompts but {len(completions)} completions")
    if len(prompts) > max_batch:
        raise RequestError(413, f"{len(prompts)} rows in one request; this server takes at most {max_batch}")
    columns = request.get("columns")
    if columns is not None:
        if not isinstance(columns, list) or not all(isinstance(row, dict) for row in columns):
            raise RequestError(400, "'columns' must be a list of objects, one per prompt")
        if len(columns) != len(prompts):
            raise RequestError(400, f"{len(prompts)} prompts but {len(columns)} rows of columns")
    request_id = request.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or not 0 < len(request_id) <= 200):
        raise RequestError(400, "'request_id' must be a string of 1 to 200 characters")
    return prompts, completions, columns, request_id


class RewardRequestHandler(BaseHTTPRequestHandler):
    server: RewardServer
    timeout = 60  # seconds a client may take to send its request: a stalled one does not hold a thread forever

    def do_GET(self) -> None:
        self._respond(self._health if self.path.split("?")[0] == "/health" else self._not_found)

    def do_POST(self) -> None:
        self._respond(self._score if self.path.split("?")[0] == "/score" else self._not_found)

    def _respond(self, make_answer: Callable[[], bytes]) -> None:
        self._body_read = False
        try:
            self._check_token()
            status, answer = 200, make_answer()
        except RequestError as e:
            status, answer = e.status, _json({"error": e.message})
            if status != 500:  # the reward's own failure was logged with its traceback
                log.warning("%s %s: %d %s", self.command, self.path, status, e.message)
            if not self._body_read and status != 413:
                # Closing a socket with unread bytes sends a reset, which can reach the
                # client before it reads this answer: take in the (bounded) body first.
                self._drain()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        if status == 413:  # the body was left unread: this connection cannot carry another request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(answer)

    def _check_token(self) -> None:
        if self.server.token is None:
            return
        given = self.headers.get("Authorization", "")
        expected = f"Bearer {self.server.token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise RequestError(401, "missing or wrong token: send 'Authorization: Bearer <token>'")

    def _health(self) -> bytes:
        return _json({"status": "ok", "reward": self.server.spec})

    def _score(self) -> bytes:
        return self.server.answer(self._body())

    def _not_found(self) -> NoReturn:
        raise RequestError(404, f"no {self.command} {self.path}; this server answers POST /score and GET /health")

    def _body(self) -> bytes:
        """The request's body, read only once its declared size is known to be within bounds."""
        header = self.headers.get("Content-Length")
        if header is None:
            raise RequestError(411, "a Content-Length header is required")
        length = self._declared_length()
        if length is None:
            raise RequestError(400, f"Content-Length must be a number of bytes, got {header!r}")
        if length > self.server.max_request_bytes:
            raise RequestError(413, f"the request has {length} bytes; this server takes at most {self.server.max_request_bytes}")
        self._body_read = True
        return self.rfile.read(length)

    def _declared_length(self) -> int | None:
        header = self.headers.get("Content-Length", "").strip()
        return int(header) if header.isascii() and header.isdigit() else None

    def _drain(self) -> None:
        length = self._declared_length()
        if length is not None and length <= self.server.max_request_bytes:
            self.rfile.read(length)

    def log_message(self, format: str, *args) -> None:
        log.debug("%s - " + format, self.address_string(), *args)  # one line per request is noise at any useful rate


def _json(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
