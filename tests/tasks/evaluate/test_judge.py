"""The optional LLM judge against a real OpenAI-compatible HTTP server that this test starts on 127.0.0.1.

The server grades like a strict judge would: it reads the reference and the answer out of the request the
judge built and replies 'Score: 5' when they agree, 'Score: 1' when not, and prose with no score for one
marked answer; it also records each request, so the test checks what was sent.
"""
import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from schemas.evaluate import JudgeConfig
from tasks.evaluate.judge import build_request, judge_answers, parse_rating, to_score


class Grader(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Grader.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        user = body["messages"][-1]["content"]
        ref = re.search(r"Reference answer:\n(.*?)\n\nAnswer to grade:", user, re.S).group(1)
        answer = user.rsplit("Answer to grade:\n", 1)[1]
        if answer == "ramble":
            text = "I would rather not give a number."
        else:
            text = "Score: 5" if answer.strip().lower() == ref.strip().lower() else "The answer is wrong.\nScore: 1"
        out = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                       "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Grader.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Grader)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_judge_scores_answers_through_a_real_server(server, monkeypatch):
    monkeypatch.setenv("JUDGE_TOKEN", "secret-token")
    cfg = JudgeConfig(enabled=True, base_url=server, model="grader-1", api_key_env="JUDGE_TOKEN", max_items=4)
    prompts = [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(5)]
    refs = ["0", "2", "4", "6", "8"]
    answers = ["0", "3", "4", "ramble", "8"]
    result = judge_answers(cfg, prompts, refs, answers)
    assert result.scores[:3] == [1.0, 0.0, 1.0]
    assert math.isnan(result.scores[3]) and math.isnan(result.scores[4])  # no score in the reply; over the cap
    assert dict(result.failures) == {"no_rating_in_reply": 1, "over_max_items": 1}
    assert len(Grader.requests) == 4  # the item over max_items is never sent
    sent = Grader.requests[1]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer secret-token"
    assert sent["body"]["model"] == "grader-1" and sent["body"]["temperature"] == 0
    assert sent["body"]["messages"][0]["role"] == "system" and "1 (wrong) to 5" in sent["body"]["messages"][0]["content"]
    assert "user: What is 1 + 1?" in sent["body"]["messages"][1]["content"]


def test_an_unreachable_or_failing_endpoint_gives_nan_and_counts(server):
    cfg = JudgeConfig(enabled=True, base_url=server.replace("/v1", "/nope"), api_key_env=None)
    result = judge_answers(cfg, [[{"role": "user", "content": "q"}]], ["a"], ["a"])
    assert math.isnan(result.scores[0]) and list(result.failures) == ["request_failed:HTTPStatusError"]
    assert Grader.requests[0]["auth"] is None  # no token configured: no Authorization header


@pytest.mark.parametrize("text,rating", [("Score: 4", 4), ("score=2\n", 2), ("Reasoning... 3 of 5.\nScore: 5", 5),
                                         ("4", 4), ("I give it a 3", 3), ("between 2 and 4", None),
                                         ("Score: 9", None), ("no idea", None), ("Score: 4.5", 4.5)])
def test_rating_parsing(text, rating):
    assert parse_rating(text, 5) == rating


def test_request_body_and_scale():
    cfg = JudgeConfig(model="m", scale=10, max_tokens=8)
    body = build_request(cfg, [{"role": "user", "content": "Q?"}], "ref", "ans")
    assert body["max_tokens"] == 8 and "Reference answer:\nref" in body["messages"][1]["content"]
    assert to_score(10, 10) == 1.0 and to_score(1, 10) == 0.0
