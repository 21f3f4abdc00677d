"""Talking to an inference server (``fheprune serve``) from the client's side.

The secret key never leaves this process: the server gets the evaluation-key bundle and
ciphertexts, and answers with ciphertexts. Before sending anything, :meth:`RemoteSession.open`
checks that the server reports exactly the program the client spec names (its BLAKE2b-256
fingerprint). That catches a server deployed with another model or version; it cannot catch a
dishonest server, which can report any fingerprint (the client's data stays encrypted either
way). Use an https:// URL (``fheprune serve --ssl-certfile``, or a TLS proxy) whenever the
connection leaves the machine: the session token travels with every request.

::

    client = Client(ClientSpec.from_json(spec_text))        # keys stay here
    with RemoteSession.open("http://server:8470", client) as remote:
        outputs = remote.infer(client.encrypt(x))           # ciphertexts in, ciphertexts out
    y = client.decrypt(outputs, len(x))

Calls that change nothing on the server (program, health, inference, deleting a session) are
retried with exponential backoff when the connection could not be made and on 502/503/504;
registering keys is not (a retry could leave a second session behind), and nothing is resent
after a timeout (the server may still be computing the first copy).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

import httpx

from fheprune import _core
from fheprune.errors import FhepruneError, InputError
from fheprune.runtime.roles import Client
from fheprune.serving.protocol import FrameReader, iter_batch, max_ciphertext_bytes

__all__ = ["ProgramMismatchError", "RemoteSession", "ServerError", "ServerUnavailableError"]

log = logging.getLogger(__name__)


class ServerError(FhepruneError):
    """The server refused a request; ``status`` is the HTTP status, ``kind`` its error type."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(f"server answered {status} ({kind}): {detail}")
        self.status = status
        self.kind = kind
        self.detail = detail


class ServerUnavailableError(ServerError):
    """The server could not be reached, or stayed busy, through every retry."""


class ProgramMismatchError(InputError):
    """The server runs another program than the client spec names."""


_RETRY_STATUS = {502, 503, 504}


class RemoteSession:
    """One client's session on a server: its keys registered, inferences run remotely."""

    def __init__(
        self,
        url: str,
        client: Client,
        *,
        timeout_s: float = 600.0,
        retries: int = 4,
        backoff_s: float = 0.25,
        http: httpx.Client | None = None,
    ) -> None:
        if not isinstance(client, Client):
            raise InputError(f"client must be a fheprune Client, got {type(client).__name__}")
        self.url = url.rstrip("/")
        self.client = client
        self.retries = retries
        self.backoff_s = backoff_s
        self._http = http or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0))
        self._owns_http = http is None
        self.token: str | None = None
        self.program: dict[str, Any] = {}

    # ---- lifecycle ----

    @classmethod
    def open(cls, url: str, client: Client, **kwargs: Any) -> RemoteSession:
        """Checks the server's program against the client spec, then registers the keys."""
        session = cls(url, client, **kwargs)
        try:
            session.check_program()
            session.register()
        except BaseException:
            session.close()
            raise
        return session

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Deletes the session on the server (its keys go at once; if that fails, they expire
        after the server's idle timeout), then the connection."""
        try:
            if self.token is not None:
                try:
                    self.delete()
                except (ServerError, httpx.HTTPError) as error:
                    log.warning("could not delete the session: %s", error)
                self.token = None
        finally:
            if self._owns_http:
                self._http.close()

    def delete(self) -> None:
        """Deletes the session on the server now; ServerError if the server refuses (an
        already expired session counts as deleted)."""
        if self.token is None:
            raise InputError("no session to delete")
        self._call("DELETE", "/v1/sessions/current", retry=True, expect=(204, 404))
        self.token = None

    # ---- calls ----

    def check_program(self) -> dict[str, Any]:
        """The server's program facts; ProgramMismatchError unless its fingerprint and
        parameters are the client spec's."""
        want = self.client.spec.program_fingerprint
        if want is None:
            raise ProgramMismatchError(
                "the client spec names no program fingerprint, so the server's program cannot "
                "be checked; use a client.json written by this version (fheprune run)"
            )
        info: dict[str, Any] = self._call("GET", "/v1/program", retry=True).json()
        if info.get("program_fingerprint") != want:
            raise ProgramMismatchError(
                f"the server runs program {str(info.get('program_fingerprint'))[:16]}..., the "
                f"client spec names {want[:16]}...: refusing to send keys or data"
            )
        if info.get("parameters") != bytes(self.client.spec.parameters.to_bytes()).hex():
            raise ProgramMismatchError("the server's parameters are not the client spec's")
        self.program = info
        return info

    def register(self) -> str:
        """Uploads the evaluation keys (never the secret key); returns the session token."""
        keys = self.client.evaluation_keys_bytes()
        response = self._call("POST", "/v1/sessions", content=keys, retry=False, expect=(201,))
        self.token = str(response.json()["session"])
        return self.token

    def infer(self, inputs: Sequence[Any]) -> list[Any | None]:
        """Input ciphertexts -> output ciphertexts (None = known zero), computed remotely."""
        if self.token is None:
            raise InputError("no session: call register() (or use RemoteSession.open) first")
        if not self.program:
            self.check_program()  # nothing goes to a server that reports another program
        frames = [bytes(_core.save(self.client.context, c)) for c in inputs]

        def body() -> Iterator[bytes]:  # streamed: sent chunk by chunk, never joined
            return iter_batch(frames, len(frames))

        response = self._call("POST", "/v1/infer", content=body, retry=True)
        # The answer holds exactly the program's outputs for these groups, no more.
        groups = max(1, len(frames) // int(self.program["input_ciphertexts"]))
        expected = groups * int(self.program["output_ciphertexts"])
        limit = max_ciphertext_bytes(self.client.spec.parameters)
        reader = FrameReader(max_frames=expected, max_frame_bytes=limit, allow_empty=True)
        reader.feed(response.content)
        return [
            None if frame is None else _core.load_ciphertext(self.client.context, frame)
            for frame in reader.finish()
        ]

    def metrics(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/metrics", retry=True).json()
        return result

    # ---- transport ----

    def _call(
        self,
        method: str,
        path: str,
        *,
        retry: bool,
        content: bytes | Callable[[], Iterator[bytes]] | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if content is not None:
            headers["Content-Type"] = "application/octet-stream"
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                body = content() if callable(content) else content
                response = self._http.request(
                    method, self.url + path, content=body, headers=headers
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:  # nothing was sent
                if last:
                    raise ServerUnavailableError(0, type(error).__name__, str(error)) from error
                self._sleep(attempt)
                continue
            except httpx.TransportError as error:  # maybe sent: a retry could do it twice
                raise ServerUnavailableError(0, type(error).__name__, str(error)) from error
            if response.status_code in expect:
                return response
            if response.status_code in _RETRY_STATUS and not last:
                self._sleep(attempt)
                continue
            raise _server_error(response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _sleep(self, attempt: int) -> None:
        time.sleep(self.backoff_s * (2**attempt))


def _server_error(response: httpx.Response) -> ServerError:
    try:
        body = response.json()
        kind, detail = str(body.get("error", "?")), str(body.get("detail", ""))
    except ValueError:
        kind, detail = "?", response.text[:200]
    cls = ServerUnavailableError if response.status_code in _RETRY_STATUS else ServerError
    return cls(response.status_code, kind, detail)
