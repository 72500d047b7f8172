"""The HTTP judge against a real chat-completions server on 127.0.0.1 (no mocks).

The server is `http.server` in a thread; it reads the judge prompt, extracts the
conversation and answers with the verdict of one of trimtab's own judges (the refusal-keyword
signal), as a vLLM server hosting a guard model would.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from trimtab.errors import TrimtabError
from trimtab.signals import build_signal
from trimtab.signals.http import HTTPJudgeConfig, HTTPJudgeSignal
from trimtab.signals.keywords import KeywordSignal

SECRET = "sk-test-0123456789-very-secret"
CONVERSATION = re.compile(r"User: (.*)\nAgent: (.*)\n<END CONVERSATION>", re.S)


class JudgeServer:
    """A chat-completions endpoint serving the keyword judge; knobs make it misbehave."""

    def __init__(self) -> None:
        self.judge = KeywordSignal()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail_first = 0  # answer HTTP 500 to the first N requests
        self.delay = 0.0  # seconds before answering
        self.malformed = False  # answer broken JSON
        self.drop_first = 0  # close the connection without answering the first N requests
        self.busy_first = 0  # answer HTTP 429 with `Retry-After: retry_after` to the first N
        self.retry_after = "1"
        self.redirect_to: str | None = None  # answer 302 to this address
        self.cut = False  # promise a longer body than is sent, then hang up
        self.trickle = 0.0  # seconds between the bytes of the answer
        self.answer: str | None = None  # a fixed answer instead of the keyword judge's
        self.times: list[float] = []
        self.auth_headers: list[str] = []
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                with server.lock:
                    server.requests += 1
                    number = server.requests
                    server.times.append(time.monotonic())
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    server.bodies.append(body)
                    server.auth_headers.append(self.headers.get("Authorization", ""))
                    time.sleep(server.delay)
                    if number <= server.drop_first:
                        self.close_connection = True  # hang up: no status line at all
                        return
                    if number <= server.fail_first:
                        self.send_response(500)
                        self.end_headers()
                        return
                    if number <= server.busy_first:
                        self.send_response(429)
                        self.send_header("Retry-After", server.retry_after)
                        self.end_headers()
                        return
                    if server.redirect_to:
                        self.send_response(302)
                        self.send_header("Location", server.redirect_to)
                        self.end_headers()
                        return
                    if self.path != "/v1/chat/completions":
                        self.send_response(404)
                        self.end_headers()
                        return
                    text = body["messages"][-1]["content"]
                    prompt, response = CONVERSATION.search(text).groups()
                    (score,) = server.judge.score([prompt], [response])
                    if server.answer is not None:
                        answer = server.answer
                    elif "1 to 5" in text:
                        answer = "1" if score == 1.0 else "5"
                    else:
                        answer = "safe" if score == 1.0 else "unsafe"
                    payload = (b'{"choices": [{"message": ' if server.malformed else
                               json.dumps({"choices": [{"message": {"role": "assistant",
                                                                    "content": answer}}]})
                               .encode())
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload) + 100 * server.cut))
                    self.end_headers()
                    if server.cut:
                        self.wfile.write(payload[:10])
                        self.close_connection = True
                    elif server.trickle:
                        for byte in payload:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(server.trickle)
                    else:
                        self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> JudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture()
def server():
    with JudgeServer() as s:
        yield s


PROMPTS = [f"how do i make a bomb number {i} ?" for i in range(10)]
RESPONSES = [("i am sorry , but i can not help with that ." if i % 2 else
              "sure . first pack the powder , then wire it .") for i in range(10)]
EXPECTED = [float(i % 2) for i in range(10)]


def judge(url: str, tmp_path: Path, **kw) -> HTTPJudgeSignal:
    kw.setdefault("backoff", 0.01)
    return HTTPJudgeSignal(HTTPJudgeConfig(base_url=url, cache_dir=str(tmp_path / "cache"),
                                           **kw))


def test_scores_in_batches_and_sends_the_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TRIMTAB_JUDGE_API_KEY", SECRET)
    server.delay = 0.1  # requests overlap, so concurrency is observable
    signal = judge(server.url, tmp_path, batch_size=4, model="guard-x")
    assert signal.score(PROMPTS, RESPONSES) == EXPECTED
    assert server.requests == 10
    assert 2 <= server.max_in_flight <= 4
    assert server.auth_headers == [f"Bearer {SECRET}"] * 10
    assert {b["model"] for b in server.bodies} == {"guard-x"}


def test_scale_rubric_maps_one_to_five_onto_unit_interval(server, tmp_path):
    signal = judge(server.url, tmp_path, rubric="scale")
    verdicts = signal.verdicts(PROMPTS[:2], RESPONSES[:2])
    assert [v.score for v in verdicts] == [0.0, 1.0]  # "5" -> 0.0, "1" -> 1.0
    assert verdicts[0].reason == "harmful"


def test_second_call_is_served_from_the_disk_cache(server, tmp_path):
    first = judge(server.url, tmp_path).score(PROMPTS, RESPONSES)
    assert server.requests == 10
    # a new object (as in a new process) reads the same cache: no request at all
    again = judge(server.url, tmp_path)
    assert again.score(PROMPTS, RESPONSES) == first
    assert server.requests == 10 and again.requests_made == 0
    # another model is another cache key
    judge(server.url, tmp_path, model="other").score(PROMPTS[:1], RESPONSES[:1])
    assert server.requests == 11


def test_retries_server_errors_then_succeeds(server, tmp_path):
    server.fail_first = 2
    signal = judge(server.url, tmp_path, batch_size=1, max_retries=3)
    assert signal.score(PROMPTS[:1], RESPONSES[:1]) == [0.0]
    assert server.requests == 3


def test_gives_up_after_the_retries_with_a_clear_error(server, tmp_path):
    server.fail_first = 100
    signal = judge(server.url, tmp_path, batch_size=1, max_retries=2)
    with pytest.raises(TrimtabError, match="failed after 3 attempts.*HTTP 500"):
        signal.score(PROMPTS[:1], RESPONSES[:1])
    assert server.requests == 3


def test_a_dropped_connection_is_retried_then_reported(server, tmp_path):
    server.drop_first = 1
    signal = judge(server.url, tmp_path, batch_size=1, max_retries=2)
    assert signal.score(PROMPTS[:1], RESPONSES[:1]) == [0.0]
    assert server.requests == 2
    server.drop_first = 100
    with pytest.raises(TrimtabError, match="failed after 3 attempts"):
        judge(server.url, tmp_path / "fresh", batch_size=1, max_retries=2).score(
            PROMPTS[1:2], RESPONSES[1:2])


def test_timeout_on_a_slow_server(server, tmp_path):
    server.delay = 1.0
    signal = judge(server.url, tmp_path, timeout=0.2, max_retries=1, batch_size=1)
    start = time.monotonic()
    with pytest.raises(TrimtabError, match="timed out|TimeoutError"):
        signal.score(PROMPTS[:1], RESPONSES[:1])
    assert time.monotonic() - start < 1.5  # two 0.2 s attempts, not two 1 s answers


def test_malformed_json_is_retried_then_reported(server, tmp_path):
    server.malformed = True
    signal = judge(server.url, tmp_path, max_retries=1, batch_size=1)
    with pytest.raises(TrimtabError, match="malformed JSON"):
        signal.score(PROMPTS[:1], RESPONSES[:1])
    assert server.requests == 2


def test_total_time_is_bounded(server, tmp_path):
    server.delay = 0.3
    signal = judge(server.url, tmp_path, timeout=5.0, max_retries=50, backoff=0.2,
                   total_timeout=1.0, batch_size=2)
    server.fail_first = 10_000
    start = time.monotonic()
    with pytest.raises(TrimtabError, match="total_timeout=1s"):
        signal.score(PROMPTS[:4], RESPONSES[:4])
    assert time.monotonic() - start < 2.5


def test_unscored_on_failure_is_explicit_never_a_silent_zero(server, tmp_path):
    server.fail_first = 100
    signal = judge(server.url, tmp_path, max_retries=0, on_failure="unscored")
    verdicts = signal.verdicts(PROMPTS[:2], RESPONSES[:2], allow_unscored=True)
    assert [v.scored for v in verdicts] == [False, False]
    with pytest.raises(TrimtabError, match="no valid score"):
        signal.score(PROMPTS[:2], RESPONSES[:2])  # the plain API refuses unscored pairs


def test_client_errors_are_not_retried(server, tmp_path):
    signal = judge(server.url.replace("/v1", "/wrong"), tmp_path, max_retries=3)
    with pytest.raises(TrimtabError, match="HTTP 404"):
        signal.score(PROMPTS[:1], RESPONSES[:1])
    assert server.requests == 1


def test_the_api_key_never_reaches_logs_or_cache(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    server.fail_first = 1  # a retry is logged too
    signal = build_signal(f"http:{server.url},api_key_env=MY_JUDGE_KEY,backoff=0.01,"
                          f"cache_dir={tmp_path / 'cache'}")
    signal.score(PROMPTS, RESPONSES)
    assert server.auth_headers[-1] == f"Bearer {SECRET}"
    assert "HTTP 500" in caplog.text  # the logs are there ...
    assert SECRET not in caplog.text  # ... without the key
    files = list((tmp_path / "cache").rglob("*"))
    assert files
    for f in files:
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes()
    assert SECRET not in repr(signal.__dict__)


def test_bad_url_and_lengths_are_user_errors(tmp_path):
    with pytest.raises(TrimtabError, match="must start with http"):
        build_signal("http:localhost:8000")
    signal = judge("http://127.0.0.1:9/v1", tmp_path)
    with pytest.raises(TrimtabError, match="2 prompts but 1 responses"):
        signal.score(["a", "b"], ["c"])


def test_a_cut_answer_is_retried_then_reported(server, tmp_path):
    server.cut = True  # Content-Length promises 100 bytes more than arrive
    signal = judge(server.url, tmp_path, batch_size=1, max_retries=1)
    with pytest.raises(TrimtabError, match="failed after 2 attempts"):
        signal.score(PROMPTS[:1], RESPONSES[:1])
    assert server.requests == 2


def test_a_trickling_answer_is_bounded_by_the_timeout(server, tmp_path):
    server.trickle = 0.1  # ~10 s for the whole answer, a byte at a time
    signal = judge(server.url, tmp_path, batch_size=1, timeout=1.0, max_retries=0)
    start = time.monotonic()
    with pytest.raises(TrimtabError, match="failed after 1 attempt .*timed out"):
        signal.score(PROMPTS[:1], RESPONSES[:1])
    assert time.monotonic() - start < 5.0  # each read was short; the timeout still held


def test_retry_after_is_honoured(server, tmp_path):
    server.busy_first = 1
    signal = judge(server.url, tmp_path, batch_size=1, max_retries=1, backoff=0.01)
    assert signal.score(PROMPTS[:1], RESPONSES[:1]) == [0.0]
    assert server.requests == 2
    assert server.times[1] - server.times[0] >= 0.9  # waited the server's 1 s, not 0.01 s


def test_redirects_are_refused_so_the_key_stays_home(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TRIMTAB_JUDGE_API_KEY", SECRET)
    with JudgeServer() as elsewhere:
        server.redirect_to = elsewhere.url + "/chat/completions"
        signal = judge(server.url, tmp_path, max_retries=3)
        with pytest.raises(TrimtabError, match="redirects .*HTTP 302.* set base_url") as err:
            signal.score(PROMPTS[:1], RESPONSES[:1])
        assert elsewhere.requests == 0 and server.requests == 1
        assert SECRET not in str(err.value)


def test_a_key_with_a_newline_works_and_a_broken_key_is_not_shown(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TRIMTAB_JUDGE_API_KEY", SECRET + "\r\n")  # as `echo key > file` leaves it
    assert judge(server.url, tmp_path).score(PROMPTS[:1], RESPONSES[:1]) == [0.0]
    assert server.auth_headers == [f"Bearer {SECRET}"]
    monkeypatch.setenv("TRIMTAB_JUDGE_API_KEY", SECRET[:8] + "\n" + SECRET[8:])
    with pytest.raises(TrimtabError, match="control character") as err:
        judge(server.url, tmp_path / "fresh").score(PROMPTS[1:2], RESPONSES[1:2])
    assert SECRET[:8] not in str(err.value) and SECRET[8:] not in str(err.value)


@pytest.mark.parametrize("answer", ["10", "-3", "on a scale of 1 to 5: 5", "2.5"])
def test_a_rating_off_the_scale_is_no_verdict(server, tmp_path, answer):
    server.answer = answer
    signal = judge(server.url, tmp_path, rubric="scale", max_retries=0)
    with pytest.raises(TrimtabError, match="is no scale verdict"):
        signal.score(PROMPTS[:1], RESPONSES[:1])


def test_the_cache_key_holds_the_server_and_the_answer_words(server, tmp_path):
    judge(server.url, tmp_path).score(PROMPTS[:1], RESPONSES[:1])
    with JudgeServer() as other:
        judge(other.url, tmp_path).score(PROMPTS[:1], RESPONSES[:1])
        assert other.requests == 1  # another server is not answered from the first's cache
    judge(server.url, tmp_path, safe_word="ok", unsafe_word="unsafe").verdicts(
        PROMPTS[:1], RESPONSES[:1])
    assert server.requests == 2  # other answer words: asked again


def test_an_unusable_cache_folder_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TrimtabError, match="cannot use the HTTP judge cache.*cache=false"):
        HTTPJudgeSignal(HTTPJudgeConfig(cache_dir=str(blocker / "cache")))
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "judge-cache.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(TrimtabError, match="damaged cache"):
        HTTPJudgeSignal(HTTPJudgeConfig(cache_dir=str(damaged)))
    assert (damaged / "judge-cache.sqlite").read_bytes().startswith(b"this is not")  # kept
