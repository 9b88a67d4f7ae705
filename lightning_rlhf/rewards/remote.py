"""A reward source in another process: the client of ``lightning-rlhf serve-reward``.

A reward model that needs its own GPU, a verifier that runs code in a sandbox, or a
judge that lives on another machine is served once (``rewards.serve``) and named in a
recipe by its URL::

    reward:
      class_path: lightning_rlhf.rewards.RemoteReward
      init_args: {url: "http://127.0.0.1:8000/"}

A server that stops answering must not lose a run: every request is tried ``retries``
times with exponential backoff, then :class:`RewardServerUnavailable` stops it, and the
training loop's ``OutageCheckpoint`` saves a checkpoint from before the failed rollout.
A request carries an id that its retries reuse, so a retry whose first try did reach the
server is answered from the server's memory instead of being scored twice.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import time
import urllib.error
import urllib.request
import uuid

import torch
from torch import Tensor

from lightning_rlhf.rewards.base import RewardSource

# Answers worth another try: the server is overloaded (429) or failed (5xx), not the request.
RETRIED_STATUS = frozenset({429}) | frozenset(range(500, 600))


class RewardServerUnavailable(RuntimeError):
    """The reward server did not answer a request after every try.

    ``checkpoint`` is set by ``callbacks.OutageCheckpoint`` once it has saved the run, so
    the message says where the run can be resumed from."""

    def __init__(self, url: str, tries: int, last_error: str):
        super().__init__(url, tries, last_error)
        self.url, self.tries, self.last_error = url, tries, last_error
        self.checkpoint: str | None = None
        self.step: int | None = None

    def __str__(self) -> str:
        saved = (
            f"saved {self.checkpoint} at step {self.step}, before the rollout that failed; "
            if self.checkpoint else ""
        )
        return (
            f"the reward server at {self.url} did not answer after {self.tries} tries (last error: {self.last_error}); "
            f"{saved}start the server again and resume with --ckpt_path last"
        )


class RemoteReward(RewardSource):
    """Scores through a reward server (``lightning-rlhf serve-reward``) over HTTP.

    The prompt rows' other columns travel with the text, so a server whose reward reads
    them (``contains_answer``'s ``answer``) gets them; they must be JSON values. A score
    the server could not give (None from a reward function) comes back as NaN.
    """

    reads_columns = True

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 1.0,
        batch_size: int = 256,
        token_env: str = "LIGHTNING_RLHF_REWARD_TOKEN",
    ):
        """
        Args:
            url: the server's address, e.g. ``http://127.0.0.1:8000/`` (``/score`` is added)
            timeout: seconds to wait for one answer
            retries: tries per request, the first included, before the run stops
            backoff: seconds before the second try; each later wait doubles it
            batch_size: rows per request at most
            token_env: environment variable holding the server's shared token, if it has
                one (sent as ``Authorization: Bearer``; the token itself is never in a recipe)
        """
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"RemoteReward url must start with http:// or https://, got {url!r}")
        if timeout <= 0 or retries < 1 or backoff < 0 or batch_size < 1:
            raise ValueError(
                f"RemoteReward needs timeout > 0, retries >= 1, backoff >= 0 and batch_size >= 1; got timeout={timeout}, "
                f"retries={retries}, backoff={backoff}, batch_size={batch_size}"
            )
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        self.batch_size, self.token_env = batch_size, token_env
        self.score_url = url.rstrip("/") + "/score"

    def score(self, prompts, completions, columns: list[dict] | None = None) -> Tensor:
        scores: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            end = start + self.batch_size
            rows = {"prompts": prompts[start:end], "completions": completions[start:end]}
            if columns is not None:
                rows["columns"] = columns[start:end]
            scores += self._request(rows)
        return torch.tensor(scores, dtype=torch.float32)

    def _request(self, rows: dict) -> list[float]:
        try:
            body = json.dumps({**rows, "request_id": uuid.uuid4().hex}, allow_nan=False).encode()
        except (TypeError, ValueError) as e:
            raise ValueError(f"RemoteReward sends the prompt rows' columns as JSON, and one is not a JSON value: {e}") from None
        headers = {"Content-Type": "application/json"}
        token = os.environ.get(self.token_env)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        last_error = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.score_url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return _scores_from(response.read(), len(rows["prompts"]), self.url)
            except urllib.error.HTTPError as e:
                message = _error_message(e)
                if e.code not in RETRIED_STATUS:
                    raise ValueError(f"the reward server at {self.url} refused the request (HTTP {e.code}): {message}") from None
                last_error = f"HTTP {e.code}: {message}"
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                last_error = f"{type(e).__name__}: {getattr(e, 'reason', None) or e}"
        raise RewardServerUnavailable(self.url, self.retries, last_error)


def _scores_from(payload: bytes, expected: int, url: str) -> list[float]:
    """The ``scores`` of an answer; null (a score the reward could not give) is NaN."""
    try:
        scores = json.loads(payload)["scores"]
        if len(scores) != expected:
            raise ValueError(f"{len(scores)} scores for {expected} rows")
        return [math.nan if value is None else float(value) for value in scores]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"the reward server at {url} sent an answer that is not {{'scores': [...]}}: {e}") from None


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read())["error"])
    except Exception:  # not our server's JSON error (a proxy's page): its status line says enough
        return str(error.reason)
