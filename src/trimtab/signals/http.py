"""An OpenAI-compatible chat-completions judge over HTTP (`http:BASE_URL`), e.g. a vLLM server.

One request per (prompt, response) pair, `batch_size` of them in flight at once. Each
request has a `timeout` (reading a slowly trickling answer included); a failed one
(connection error, timeout, a dropped or garbled HTTP answer, HTTP 429 or 5xx, malformed JSON,
an answer that is no verdict) is retried with exponential backoff (or after the server's
`Retry-After`) up to `max_retries` times, and a whole `judge` call never runs much longer than
`total_timeout`. After that the call raises a TrimtabError, or, with `on_failure=unscored`,
leaves the pair unscored and logs it: never a silent score. HTTP 4xx other than 429 is the
caller's mistake and is not retried; neither is a redirect, which is refused rather than
followed, so the API key only ever goes to `base_url`.

Answers are cached on disk (SQLite) under a hash of everything that decides a verdict (server
URL, model, rubric, templates, answer words, sampling settings, prompt, response), so
re-scoring the same pairs makes no request. The API key is read from the environment variable
`api_key_env` at request time and is never logged, cached or stored on the object.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from trimtab.config import CheckedConfig, option
from trimtab.errors import TrimtabError
from trimtab.signals.base import UNSCORED, AlignmentSignal, Verdict
from trimtab.signals.rubric import RUBRICS, parse_answer, render, template_for

log = logging.getLogger(__name__)


@dataclass
class HTTPJudgeConfig(CheckedConfig):
    base_url: str = option("http://127.0.0.1:8000/v1", "server root; requests go to "
                                                      "BASE_URL/chat/completions")
    model: str = option("judge", "model name sent with each request")
    api_key_env: str | None = option("TRIMTAB_JUDGE_API_KEY", "environment variable holding "
                                     "the API key (never logged or written); unset: no key")
    rubric: str = option("binary", "binary: safe/unsafe; scale: a 1-5 harm rating mapped to "
                                   "[0, 1]", choices=RUBRICS)
    template: str | None = option(None, "judge template with {prompt} and {response}; none: "
                                        "the built-in one of the rubric")
    system_prompt: str | None = option(None, "optional system message sent before the template")
    safe_word: str = option("safe", "the answer that means aligned (binary rubric)")
    unsafe_word: str = option("unsafe", "the answer that means misaligned (binary rubric)")
    max_tokens: int = option(8, "tokens the judge may answer with", min=1)
    temperature: float = option(0.0, "sampling temperature of the judge", min=0.0)
    batch_size: int = option(8, "requests in flight at once", min=1)
    timeout: float = option(30.0, "seconds one request may take", min=0.0)
    max_retries: int = option(4, "retries of a failed request", min=0)
    backoff: float = option(0.5, "seconds before the first retry; doubled each retry", min=0.0)
    max_backoff: float = option(8.0, "longest wait between retries", min=0.0)
    total_timeout: float = option(600.0, "seconds one judge call may take, retries included",
                                  min=0.0)
    cache: bool = option(True, "cache answers on disk")
    cache_dir: str | None = option(None, "cache folder; none: $TRIMTAB_CACHE/signals/http")
    on_failure: str = option("raise", "a pair still failing after the retries: raise, or leave "
                                      "it unscored (logged)", choices=("raise", "unscored"))


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds the server asked us to wait (Retry-After)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: following one would send the API key to another address."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        return None  # urllib then raises HTTPError(code)


def _retry_after(headers: object) -> float | None:
    value = getattr(headers, "get", lambda _: None)("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


def _read_body(resp: http.client.HTTPResponse, deadline: float) -> bytes:
    """The whole answer, chunk by chunk, giving up at `deadline`: the socket timeout alone
    bounds each read, not a server that trickles bytes."""
    chunks = []
    while chunk := resp.read1(65536):
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise _Retryable("timed out while reading the answer")
    return b"".join(chunks)


class HTTPJudgeSignal(AlignmentSignal):
    name = "http"

    def __init__(self, config: HTTPJudgeConfig | None = None) -> None:
        self.config = c = config or HTTPJudgeConfig()
        if not c.base_url.startswith(("http://", "https://")):
            raise TrimtabError(f"the HTTP judge URL {c.base_url!r} must start with http:// or "
                               "https://, e.g. http:http://127.0.0.1:8000/v1.")
        self.url = c.base_url.rstrip("/") + "/chat/completions"
        self.template = template_for(c.rubric, c.template)
        self.requests_made = 0
        self._lock = threading.Lock()
        self._opener = urllib.request.build_opener(_NoRedirect())
        self._db: Path | None = None
        if c.cache:
            from trimtab.cache import cache_root

            folder = Path(c.cache_dir) if c.cache_dir else cache_root() / "signals" / "http"
            self._db = folder / "judge-cache.sqlite"
            with self._cache_errors():
                folder.mkdir(parents=True, exist_ok=True)
                with sqlite3.connect(self._db) as db:
                    db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, "
                               "score REAL, reason TEXT, answer TEXT)")

    # ------------------------------------------------------------------ cache
    @contextlib.contextmanager
    def _cache_errors(self) -> Iterator[None]:
        try:
            yield
        except (OSError, sqlite3.Error) as err:
            raise TrimtabError(f"cannot use the HTTP judge cache {self._db} ({err}); set "
                               "cache_dir= to a writable folder (or delete a damaged cache "
                               "file), or turn the cache off with cache=false.") from None

    def _key(self, prompt: str, response: str) -> str:
        c = self.config
        parts = [self.url, c.model, c.rubric, c.system_prompt, self.template, c.safe_word,
                 c.unsafe_word, c.max_tokens, c.temperature, prompt, response]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def _cached(self, keys: list[str]) -> dict[str, Verdict]:
        if self._db is None:
            return {}
        found: dict[str, Verdict] = {}
        with self._cache_errors(), sqlite3.connect(self._db) as db:
            for start in range(0, len(keys), 500):
                part = keys[start:start + 500]
                rows = db.execute("SELECT key, score, reason FROM verdicts WHERE key IN "
                                  f"({','.join('?' * len(part))})", part)
                found.update({k: Verdict(s, r) for k, s, r in rows})
        return found

    def _store(self, rows: list[tuple[str, Verdict, str]]) -> None:
        if self._db is None or not rows:
            return
        with self._cache_errors(), sqlite3.connect(self._db) as db:
            db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?)",
                           [(k, v.score, v.reason, a) for k, v, a in rows])

    # ------------------------------------------------------------------ requests
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        name = self.config.api_key_env
        key = (os.environ.get(name) or "").strip() if name else ""
        if key:
            if not key.isprintable() or " " in key:
                raise TrimtabError(f"the API key in ${name} contains a space or a control "
                                   "character (the key is not shown); set the variable to the "
                                   "key alone.")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _request(self, prompt: str, response: str, timeout: float) -> tuple[Verdict, str]:
        c = self.config
        messages = [{"role": "user", "content": render(self.template, prompt, response)}]
        if c.system_prompt:
            messages.insert(0, {"role": "system", "content": c.system_prompt})
        body = json.dumps({"model": c.model, "messages": messages, "max_tokens": c.max_tokens,
                           "temperature": c.temperature}).encode()
        req = urllib.request.Request(self.url, data=body, headers=self._headers(),
                                     method="POST")
        with self._lock:
            self.requests_made += 1
        until = time.monotonic() + timeout
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                raw = _read_body(resp, until)
        except urllib.error.HTTPError as err:
            if err.code == 429 or err.code >= 500:
                raise _Retryable(f"HTTP {err.code}", _retry_after(err.headers)) from None
            if 300 <= err.code < 400:
                where = err.headers.get("Location", "another address")
                raise TrimtabError(f"the HTTP judge at {self.url} redirects (HTTP {err.code}) "
                                   f"to {where}; set base_url to the address it redirects to "
                                   "(redirects are not followed, so that the API key never "
                                   "goes anywhere else).") from None
            hint = (f" Check the key in ${c.api_key_env}." if err.code in (401, 403)
                    and c.api_key_env else "")
            raise TrimtabError(f"the HTTP judge at {self.url} refused the request with HTTP "
                               f"{err.code} ({err.reason}).{hint} Check base_url and model "
                               f"({c.model!r}).") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError,
                http.client.HTTPException) as err:  # HTTPException: a cut or garbled answer
            reason = getattr(err, "reason", err)
            raise _Retryable(f"{type(err).__name__}: {reason}") from None
        try:
            answer = json.loads(raw)["choices"][0]["message"]["content"]
            if not isinstance(answer, str):
                raise TypeError(type(answer).__name__)
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise _Retryable(f"malformed JSON from the server ({type(err).__name__})") from None
        verdict = parse_answer(answer, c.rubric, c.safe_word, c.unsafe_word)
        if verdict is None:
            raise _Retryable(f"the answer {answer[:40]!r} is no {c.rubric} verdict")
        return verdict, answer

    def _with_retries(self, prompt: str, response: str, deadline: float,
                      stop: threading.Event) -> tuple[Verdict, str] | None:
        c = self.config
        last, attempts = "no attempt", 0
        for attempt in range(c.max_retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stop.is_set():
                break
            attempts += 1
            try:
                return self._request(prompt, response, min(c.timeout, remaining))
            except _Retryable as err:
                last = str(err)
                log.info("HTTP judge request failed (%s), attempt %d of %d", last,
                         attempt + 1, c.max_retries + 1)
                asked = err.retry_after
            if attempt < c.max_retries:
                backoff = min(c.backoff * 2 ** attempt, c.max_backoff)
                stop.wait(min(backoff if asked is None else asked,
                              max(0.0, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            last += f"; the call reached total_timeout={c.total_timeout:g}s"
        if c.on_failure == "unscored":
            log.warning("HTTP judge gave up on a pair (%s); it is left unscored", last)
            return None
        raise TrimtabError(
            f"the HTTP judge at {self.url} failed after {attempts} attempt"
            f"{'s' if attempts != 1 else ''} ({last}); "
            "check that the server runs and answers chat completions, or raise timeout, "
            "max_retries or total_timeout."
        )

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        c = self.config
        keys = [self._key(p, r) for p, r in zip(prompts, responses, strict=True)]
        cached = self._cached(keys)
        todo = [i for i, k in enumerate(keys) if k not in cached]
        log.info("HTTP judge %s (model %s): %d pairs, %d cached", self.url, c.model,
                 len(keys), len(keys) - len(todo))
        results: dict[int, tuple[Verdict, str] | None] = {}
        if todo:
            deadline = time.monotonic() + c.total_timeout
            stop = threading.Event()
            with ThreadPoolExecutor(max_workers=c.batch_size) as pool:
                futures = {i: pool.submit(self._with_retries, prompts[i], responses[i],
                                          deadline, stop) for i in todo}
                try:
                    for i, fut in futures.items():
                        results[i] = fut.result()
                except BaseException:
                    stop.set()
                    for fut in futures.values():
                        fut.cancel()
                    raise
            self._store([(keys[i], r[0], r[1]) for i, r in results.items() if r is not None])
        out = []
        for i, k in enumerate(keys):
            if k in cached:
                out.append(cached[k])
            else:
                r = results[i]
                out.append(UNSCORED if r is None else r[0])
        return out
