"""Rewards served from another process: ``lightning-rlhf serve-reward`` and ``RemoteReward``.

A served reward scores as the same reward in process (a column it reads, a None it gives);
the server refuses what it should (no token, too big, not JSON, too many rows) and keeps
serving; the client retries, then stops with a message that says what to do; and a run
whose reward server is killed mid-run saves a checkpoint from before the failed rollout,
from which it resumes, once the server is back, to the weights of an uninterrupted run.
"""

from __future__ import annotations

import http.client
import json
import math
import select
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from lightning_rlhf.rewards import FunctionReward, RemoteReward, RewardServerUnavailable, load_reward_source
from lightning_rlhf.rewards.base import RewardSource
from lightning_rlhf.rewards.serve import RewardServer
from tests.faults import subprocess_env
from tests.test_resume import fit_in_process, policy_weights, write_recipe

LETTER_E = "lightning_rlhf.rewards.rules.letter_e_reward"
EXACT_ANSWER = "lightning_rlhf.rewards.answers.exact_answer"  # reads `answer`; None for a row without one


@contextmanager
def serving(source: RewardSource, port: int = 0, **limits):
    """A RewardServer (on a free port unless told), in a thread of this process."""
    server = RewardServer(source, "test", port=port, **limits)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def start_server(tmp_path):
    """Starts ``lightning-rlhf serve-reward`` processes; returns (process, url) once each
    has printed its address; kills them all at the end."""
    processes = []

    def start(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
        log = tmp_path / f"server-{len(processes)}.log"
        with open(log, "w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "lightning_rlhf.cli", "serve-reward", *args],
                stdout=subprocess.PIPE, stderr=stderr, text=True, env={**subprocess_env(), **(env or {})},
            )
        processes.append(process)
        ready, _, _ = select.select([process.stdout], [], [], 120)
        line = process.stdout.readline() if ready else ""
        assert line.startswith("serving "), f"the server did not start: {line!r}\n{log.read_text()[-2000:]}"
        return process, line.split(" on ")[-1].strip()

    yield start
    for process in processes:
        process.kill()
        process.wait()
        process.stdout.close()


def post(url: str, body: bytes | None, headers: dict | None = None, path: str = "/score") -> tuple[int, dict]:
    """Status and JSON answer of one request; ``body=None`` declares 10 MB and sends none."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", path)
        for key, value in (headers or {}).items():
            connection.putheader(key, value)
        connection.putheader("Content-Length", str(10_000_000 if body is None else len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def rows(n: int = 2) -> bytes:
    return json.dumps({"prompts": ["Q"] * n, "completions": ["eee"] * n}).encode()


@pytest.mark.parametrize("function", [LETTER_E, EXACT_ANSWER])
def test_a_served_reward_scores_as_the_reward_in_process(function):
    prompts = ["What is 2+3?", "What is 4+4?", "Name a colour."]
    completions = ["#### 5", "4 and 4 make #### 9", "green, like the sea"]
    columns = [{"answer": "5"}, {"answer": "8"}, {"answer": None}]  # no answer: exact_answer gives None
    local = FunctionReward(function)
    with serving(local) as server:
        remote = load_reward_source(server.url)  # the shorthand: a URL is a RemoteReward
        assert isinstance(remote, RemoteReward)
        remote.batch_size = 2  # two requests: the rows are split and put back in order
        served = remote(prompts, completions, columns)
    expected = local(prompts, completions, columns)
    torch.testing.assert_close(served, expected, rtol=0, atol=0, equal_nan=True)
    if function == EXACT_ANSWER:
        assert served[:2].tolist() == [1.0, 0.0] and math.isnan(served[2])


def test_the_server_refuses_bad_requests_and_keeps_serving(start_server, monkeypatch):
    _, url = start_server(
        "--reward", LETTER_E, "--port", "0", "--max-request-bytes", "4096", "--max-batch", "4",
        env={"LIGHTNING_RLHF_REWARD_TOKEN": "s3cret"},
    )
    token = {"Authorization": "Bearer s3cret"}
    refused = [
        (post(url, rows()), 401),
        (post(url, rows(), {"Authorization": "Bearer guess"}), 401),
        (post(url, None, token), 413),  # declared too big: refused before reading the body
        (post(url, rows(5), token), 413),  # more rows than --max-batch
        (post(url, b'{"prompts": ["Q"', token), 400),
        (post(url, json.dumps({"prompts": ["Q"], "completions": [3]}).encode(), token), 400),
        (post(url, json.dumps({"prompts": ["Q"], "completions": []}).encode(), token), 400),
        (post(url, rows(), token, path="/run"), 404),
    ]
    for (status, answer), expected in refused:
        assert status == expected and answer["error"], answer
        assert post(url, rows(), token) == (200, {"scores": [3.0, 3.0]})  # still serving
    assert "token" in refused[0][0][1]["error"] and "at most 4096" in refused[2][0][1]["error"]

    monkeypatch.delenv("LIGHTNING_RLHF_REWARD_TOKEN", raising=False)
    with pytest.raises(ValueError, match=r"HTTP 401\): missing or wrong token"):  # a 4xx is not retried
        RemoteReward(url, backoff=60)(["Q"], ["e"])
    monkeypatch.setenv("LIGHTNING_RLHF_REWARD_TOKEN", "s3cret")
    assert RemoteReward(url)(["Q"], ["eee"]).tolist() == [3.0]


class CountingReward(RewardSource):
    """Scores ``len(completion)``; counts the rows it has scored, or fails when told to."""

    def __init__(self, fail: bool = False):
        self.scored, self.fail = 0, fail

    def score(self, prompts, completions):
        if self.fail:
            raise RuntimeError("the judge model ran out of memory")
        self.scored += len(completions)
        return torch.tensor([float(len(c)) for c in completions])


def test_a_retried_request_is_answered_again_without_scoring_twice():
    source = CountingReward()
    with serving(source) as server:
        body = json.dumps({"prompts": ["Q", "Q"], "completions": ["ab", "abc"], "request_id": "r1"}).encode()
        first, retry = post(server.url, body), post(server.url, body)
        assert first == retry == (200, {"scores": [2.0, 3.0]}) and source.scored == 2
        other = json.dumps({"prompts": ["Q"], "completions": ["x"], "request_id": "r1"}).encode()
        assert post(server.url, other)[0] == 409  # one id, two requests: a client bug, not a retry


def test_the_client_retries_then_stops_with_a_message_that_says_what_to_do(monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    waits = []
    monkeypatch.setattr("lightning_rlhf.rewards.remote.time.sleep", waits.append)
    with pytest.raises(RewardServerUnavailable) as error:
        RemoteReward(url, retries=3, backoff=0.5)(["Q"], ["e"])
    assert waits == [0.5, 1.0]  # 3 tries, exponential backoff between them
    message = str(error.value)
    assert url in message and "after 3 tries" in message and "Connection refused" in message
    assert "start the server again and resume with --ckpt_path last" in message

    with serving(CountingReward(fail=True)) as server:  # a reward that fails: 500, retried, its error passed on
        with pytest.raises(RewardServerUnavailable, match="HTTP 500: the reward source failed: RuntimeError: the judge"):
            RemoteReward(server.url, retries=2, backoff=0)(["Q"], ["e"])


def remote_recipe(tmp_path: Path, root: str, url: str, name: str, callbacks: list | None = None) -> Path:
    """test_resume's GRPO recipe (6 steps, 3 an epoch) with its reward served at ``url``."""
    path = write_recipe(tmp_path, "grpo", root, callbacks, name=name)
    recipe = yaml.safe_load(path.read_text())
    recipe["model"]["init_args"]["reward"] = {
        "class_path": "lightning_rlhf.rewards.RemoteReward", "init_args": {"url": url, "retries": 2, "backoff": 0.05},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_run_whose_reward_server_dies_saves_and_resumes_to_the_uninterrupted_run(tmp_path, start_server):
    """The server is killed twice: after step 2, so step 3's rollout (the last batch of
    epoch 0) fails; restarted, and the run resumed, after step 3, so the first batch of
    epoch 1 fails. Each time the run stops with the message and a checkpoint of the last
    step, with the failed batch not taken; with the server back for good, the second
    resume ends where the uninterrupted run ends: weights, loss, counters, data position."""
    whole = fit_in_process("--config", str(write_recipe(tmp_path, "grpo", "whole", name="whole")))  # the reward in process
    assert whole.trainer.global_step == 6

    last = tmp_path / "outage" / "checkpoints" / "last.ckpt"
    pid_file = tmp_path / "server.pid"
    port = "0"  # the first server picks one; each later one listens where the run expects it
    for kill_step, position in ((2, {"epoch": 0, "batches": 2}), (3, {"epoch": 1, "batches": 0})):
        server, url = start_server("--reward", LETTER_E, "--port", port)
        port = url.rsplit(":", 1)[1]
        pid_file.write_text(str(server.pid))
        killer = {"class_path": "tests.faults.KillProcessAtStep", "init_args": {"step": kill_step, "pid_file": str(pid_file)}}
        resume = ["--ckpt_path", "last"] if last.exists() else []
        with pytest.raises(RewardServerUnavailable) as error:
            fit_in_process("--config", str(remote_recipe(tmp_path, "outage", url, f"killed-{kill_step}", [killer])), *resume)
        assert server.wait(timeout=10) == -signal.SIGKILL
        message = str(error.value)
        assert message.startswith(f"the reward server at {url} did not answer after 2 tries (last error: URLError: ")
        assert "Connection refused" in message
        assert message.endswith(
            f"); saved {last} at step {kill_step}, before the rollout that failed; start the server again and resume "
            "with --ckpt_path last"
        )
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
        assert checkpoint["global_step"] == kill_step
        assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"seed": 0, **position}]

    with serving(FunctionReward(LETTER_E), port=int(port)):
        resumed = fit_in_process("--config", str(remote_recipe(tmp_path, "outage", url, "resume")), "--ckpt_path", "last")
    assert resumed.trainer.global_step == 6
    assert resumed.trainer.fit_loop.state_dict() == whole.trainer.fit_loop.state_dict()
    torch.testing.assert_close(
        resumed.trainer.callback_metrics["train/loss"], whole.trainer.callback_metrics["train/loss"], rtol=0, atol=1e-6
    )
    expected = policy_weights(whole)
    for name, value in policy_weights(resumed).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)


def test_the_command_prints_an_outage_as_one_line_and_exits_1(monkeypatch, capsys):
    import lightning_rlhf.cli as cli

    def outage(argv):
        raise RewardServerUnavailable("http://127.0.0.1:9/", 3, "URLError: refused")

    monkeypatch.setattr(cli, "_run", outage)
    assert cli.main(["fit", "--config", "recipe.yaml"]) == 1
    assert capsys.readouterr().err == ("error: the reward server at http://127.0.0.1:9/ did not answer after 3 tries (last error: "
                                       "URLError: refused); start the server again and resume with --ckpt_path last\n")
