"""fheprune serve and fheprune.client, tested over the network with real processes: a server
started as its own process on a free port, clients with their own keys, bad requests of every
kind, clients that vanish mid-upload, many sessions, and a graceful shutdown."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

_core = pytest.importorskip("fheprune._core", reason="the C++ engine is not built")
httpx = pytest.importorskip("httpx")

from toys import toy_compiled, toy_model  # noqa: E402

from fheprune.client import ProgramMismatchError, RemoteSession, ServerError  # noqa: E402
from fheprune.runtime import Client, ClientSpec, save_bundle  # noqa: E402
from fheprune.serving import (  # noqa: E402
    BatchFormatError,
    FrameReader,
    SessionLimitError,
    SessionStore,
    UnknownSessionError,
    encode_batch,
)

MAX_SESSIONS = 6


# ---- a server process ------------------------------------------------------------------------


class ServerProcess:
    def __init__(self, bundle: Path, folder: Path, *extra: str) -> None:
        self.ready = folder / f"ready-{time.monotonic_ns()}.json"
        self.log = folder / f"server-{time.monotonic_ns()}.log"
        command = [
            sys.executable, "-m", "fheprune", "serve", str(bundle), "--port", "0",
            "--ready-file", str(self.ready), "--insecure-test-parameters", "--workers", "2",
            "--log-level", "WARNING", *extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 120
        while not self.ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.url = json.loads(self.ready.read_text())["url"]

    def get(self, path: str) -> Any:
        return httpx.get(self.url + path, timeout=30).json()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bundle(toy_compiled(), tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("server")
    process = ServerProcess(
        bundle,
        folder,
        *("--max-sessions", str(MAX_SESSIONS), "--max-request-mb", "4", "--body-timeout", "2"),
    )
    yield process
    assert process.stop() == 0, process.log.read_text()  # graceful: exit status 0


def spec_of(bundle: Path) -> ClientSpec:
    return ClientSpec.from_json((bundle / "client.json").read_text())


def samples(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (count, 20))


def plain(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        result: np.ndarray = toy_model()(torch.from_numpy(x)).numpy()
    return result


def post(url: str, path: str, body: bytes, token: str | None = None, **headers: str) -> Any:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(url + path, content=body, headers=headers, timeout=30)


# ---- results ----------------------------------------------------------------------------------


def test_concurrent_clients_with_their_own_keys_get_correct_results(
    server: ServerProcess, bundle: Path
) -> None:
    results: dict[int, float] = {}
    errors: list[BaseException] = []
    inputs = [samples(3 + i, seed=i) for i in range(4)]
    wanted = [plain(x) for x in inputs]  # here: torch's seeding is not thread-safe

    def one(i: int) -> None:
        try:
            client = Client(spec_of(bundle))
            x = inputs[i]
            with RemoteSession.open(server.url, client) as remote:
                for _ in range(3):
                    y = client.decrypt(remote.infer(client.encrypt(x)), len(x))
                    results[i] = max(results.get(i, 0.0), float(np.max(np.abs(y - wanted[i]))))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [0, 1, 2, 3]
    assert max(results.values()) < 1e-5
    assert server.get("/v1/metrics")["sessions"]["active"] == 0  # each closed its own


def test_a_client_cannot_use_another_sessions_keys(server: ServerProcess, bundle: Path) -> None:
    alice, mallory = Client(spec_of(bundle)), Client(spec_of(bundle))
    with RemoteSession.open(server.url, alice) as a, RemoteSession.open(server.url, mallory) as m:
        inputs = alice.encrypt(samples(2, 1))
        frames = encode_batch([bytes(_core.save(alice.context, c)) for c in inputs])
        response = post(server.url, "/v1/infer", frames, token=m.token)
        assert response.status_code == 422
        assert "another secret key" in response.json()["detail"]
        # Alice's own session still works.
        y = alice.decrypt(a.infer(inputs), 2)
        assert np.max(np.abs(y - plain(samples(2, 1)))) < 1e-5


def test_the_client_checks_the_program_before_sending_anything(
    server: ServerProcess, bundle: Path
) -> None:
    before = server.get("/v1/metrics")["requests"].get("/v1/sessions", {})
    other = ClientSpec.from_json(
        (bundle / "client.json").read_text().replace(spec_of(bundle).program_fingerprint, "0" * 64)
    )
    with pytest.raises(ProgramMismatchError, match="refusing to send"):
        RemoteSession.open(server.url, Client(other))
    assert server.get("/v1/metrics")["requests"].get("/v1/sessions", {}) == before


# ---- bad requests -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def session(server: ServerProcess, bundle: Path) -> Iterator[tuple[RemoteSession, Client]]:
    client = Client(spec_of(bundle))
    with RemoteSession.open(server.url, client) as remote:
        yield remote, client


def valid_frames(client: Client) -> list[bytes]:
    return [bytes(_core.save(client.context, c)) for c in client.encrypt(samples(2, 5))]


def bad_requests(client: Client, token: str) -> list[tuple[str, dict[str, Any], int, str]]:
    """(name, request, expected status, a phrase of the message)."""
    frames = valid_frames(client)
    batch = encode_batch(frames)  # type: ignore[arg-type]
    flipped = bytearray(frames[0])
    flipped[len(flipped) // 2] ^= 1

    def batch_with(first: bytes) -> bytes:  # a full batch whose first ciphertext is `first`
        return encode_batch([first, *frames[1:]])  # type: ignore[list-item]

    other = Client(ClientSpec.from_compiled(toy_compiled(special_bits=51)))  # other parameters
    foreign = encode_batch(
        [bytes(_core.save(other.context, c)) for c in other.encrypt(samples(2, 5))]
    )
    secret = client.secret_key_bytes()
    auth = {"token": token}
    return [
        ("no token", {"body": batch}, 401, "Authorization: Bearer"),
        ("wrong session", {"body": batch, "token": "x" * 43}, 404, "no such session"),
        ("not a batch", {"body": b"hello", **auth}, 400, "not a ciphertext batch"),
        ("truncated header", {"body": batch[:5], **auth}, 400, "before the batch header"),
        ("truncated batch", {"body": batch[: len(batch) // 2], **auth}, 400, "truncated upload"),
        ("trailing bytes", {"body": batch + b"xx", **auth}, 400, "after the batch"),
        ("zero count", {"body": encode_batch([]), **auth}, 400, "1 to"),
        ("empty frame", {"body": encode_batch([b""]), **auth}, 400, "is empty"),
        ("corrupted ciphertext", {"body": batch_with(bytes(flipped)), **auth}, 400, "checksum"),
        ("a key as input", {"body": batch_with(secret), **auth}, 400, "got secret key"),
        ("too few ciphertexts", {"body": encode_batch(frames[:1]), **auth}, 400, "per group"),
        ("other parameters", {"body": foreign, **auth}, 422, "different parameters"),
        ("oversized ciphertext", {"body": encode_batch([b"x" * (1 << 20)]), **auth}, 400,
         "at most"),
        ("oversized length", {"body": b"FHPB\x01\x01\x00\x00\x00\xff\xff\xff\x7f", **auth}, 400,
         "at most"),
        ("oversized body", {"body": b"\0" * (5 << 20), **auth}, 413, "at most"),
        ("empty key upload", {"path": "/v1/sessions", "body": b""}, 400, "evaluation-key bundle"),
        ("secret key upload", {"path": "/v1/sessions", "body": secret}, 400, "a secret key"),
        ("ciphertext as keys", {"path": "/v1/sessions", "body": frames[0]}, 400, "a ciphertext"),
        ("keys of other parameters",
         {"path": "/v1/sessions", "body": other.evaluation_keys_bytes()}, 422,
         "different parameters"),
    ]  # fmt: skip


def test_every_bad_request_gets_a_clear_4xx_and_the_server_keeps_serving(
    server: ServerProcess, session: tuple[RemoteSession, Client]
) -> None:
    remote, client = session
    assert remote.token is not None
    cases = bad_requests(client, remote.token)
    assert len(cases) >= 15
    for name, request, status, phrase in cases:
        response = post(
            server.url, request.get("path", "/v1/infer"), request["body"], request.get("token")
        )
        assert response.status_code == status, (name, response.status_code, response.text)
        body = response.json()
        assert body["error"] and phrase in body["detail"], (name, body)
        assert server.process.poll() is None, name
    # Still serving, the session intact and correct.
    x = samples(2, 9)
    y = client.decrypt(remote.infer(client.encrypt(x)), len(x))
    assert np.max(np.abs(y - plain(x))) < 1e-5
    assert server.get("/v1/health")["status"] == "ok"


def test_chunked_uploads_beyond_the_limit_are_cut_off(
    server: ServerProcess, session: tuple[RemoteSession, Client]
) -> None:
    remote, _ = session

    def endless() -> Iterator[bytes]:  # no Content-Length: the server must count
        yield b"FHPB\x01\x01\x00\x00\x00\x00\x00\x10\x00"
        for _ in range(200):
            yield b"\0" * 65536

    response = httpx.post(
        server.url + "/v1/infer",
        content=endless(),
        headers={"Authorization": f"Bearer {remote.token}"},
        timeout=30,
    )
    assert response.status_code in (400, 413), response.text


def test_a_client_killed_mid_upload_leaks_nothing(
    server: ServerProcess, session: tuple[RemoteSession, Client]
) -> None:
    remote, client = session
    before = server.get("/v1/metrics")
    keys = client.evaluation_keys_bytes()
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    for path, body, token in (
        ("/v1/sessions", keys, None),
        ("/v1/infer", encode_batch(valid_frames(client)), remote.token),  # type: ignore[arg-type]
    ):
        with socket.create_connection((host, int(port))) as raw:
            head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
            if token:
                head += f"Authorization: Bearer {token}\r\n"
            raw.sendall(head.encode() + b"\r\n" + body[: len(body) // 2])
        # The connection is gone with half a body.
    time.sleep(0.5)
    after = server.get("/v1/metrics")
    assert after["sessions"]["active"] == before["sessions"]["active"]
    assert after["sessions"]["key_bytes"] == before["sessions"]["key_bytes"]
    assert after["queue"] == {"waiting": 0, "admitted": 0, "running": 0}
    assert len(remote.infer(client.encrypt(samples(1, 3)))) > 0


def read_response(raw: socket.socket) -> str:
    """One whole HTTP response (headers and a Content-Length body) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = raw.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n")
         if line.lower().startswith(b"content-length:")),
        0,
    )  # fmt: skip
    while len(body) < length:
        chunk = raw.recv(4096)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


def test_a_body_that_trickles_in_is_cut_off(
    server: ServerProcess, session: tuple[RemoteSession, Client]
) -> None:
    remote, client = session
    body = encode_batch(valid_frames(client))  # type: ignore[arg-type]
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(
            (
                f"POST /v1/infer HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                f"Authorization: Bearer {remote.token}\r\n\r\n"
            ).encode()
            + body[:100]
        )
        start = time.monotonic()
        answer = read_response(raw)
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert "did not arrive within 2 s" in answer
    assert time.monotonic() - start < 20
    assert server.get("/v1/metrics")["queue"]["admitted"] == 0


def test_sessions_are_limited_deleted_by_their_owner_and_memory_stays_bounded(
    server: ServerProcess, bundle: Path
) -> None:
    client = Client(spec_of(bundle))
    keys = client.evaluation_keys_bytes()

    def register() -> Any:
        return post(server.url, "/v1/sessions", keys)

    def delete(token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.delete(server.url + "/v1/sessions/current", headers=headers).status_code

    active = server.get("/v1/metrics")["sessions"]["active"]
    tokens = [register().json()["session"] for _ in range(MAX_SESSIONS - active)]
    full = register()
    assert full.status_code == 429 and "maximum" in full.json()["detail"]
    assert full.headers["retry-after"]
    for token in tokens:
        assert delete(token) == 204
        assert delete(token) == 404  # gone at once, and only once
    rss = []
    for round_ in range(6):
        for token in [register().json()["session"] for _ in range(4)]:
            assert delete(token) == 204
        rss.append(server.get("/v1/metrics")["server_rss_bytes"])
        del round_
    # 24 sessions of 2.5 MB keys came and went: resident memory does not follow them.
    assert rss[-1] - rss[1] < 8 * len(keys), rss


# ---- the command line ---------------------------------------------------------------------------


def test_the_client_commands_keep_the_secret_key_local(
    server: ServerProcess, bundle: Path, tmp_path: Path
) -> None:
    keys, outputs = tmp_path / "keys", tmp_path / "outputs"
    x = samples(3, 4)
    np.save(tmp_path / "x.npy", x)

    def client(*args: str) -> None:
        command = [sys.executable, "-m", "fheprune", "client", *args, "--keys", str(keys),
                   "--insecure-test-parameters"]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr

    client("keygen", "--spec", str(bundle / "client.json"))
    assert (keys / "secret_key.bin").stat().st_mode & 0o077 == 0  # owner only
    assert keys.stat().st_mode & 0o077 == 0
    client("register", "--url", server.url)
    client("infer", "--input", str(tmp_path / "x.npy"), "--out", str(outputs))
    client("decrypt", "--outputs", str(outputs), "--out", str(tmp_path / "y.npy"))
    assert np.max(np.abs(np.load(tmp_path / "y.npy") - plain(x))) < 1e-5
    client("delete")
    assert not (keys / "session.json").exists()


# ---- graceful shutdown --------------------------------------------------------------------------


def test_shutdown_finishes_the_request_in_flight(bundle: Path, tmp_path: Path) -> None:
    process = ServerProcess(bundle, tmp_path)
    client = Client(spec_of(bundle))
    remote = RemoteSession.open(process.url, client)
    x = samples(2, 6)
    batch = encode_batch([bytes(_core.save(client.context, c)) for c in client.encrypt(x)])
    halfway = threading.Event()

    def slow() -> Iterator[bytes]:
        yield batch[: len(batch) // 2]
        halfway.set()
        time.sleep(1.0)  # SIGTERM arrives now
        yield batch[len(batch) // 2 :]

    result: dict[str, Any] = {}

    def send() -> None:
        result["response"] = httpx.post(
            process.url + "/v1/infer",
            content=slow(),
            headers={"Authorization": f"Bearer {remote.token}"},
            timeout=60,
        )

    sender = threading.Thread(target=send)
    sender.start()
    assert halfway.wait(30)
    time.sleep(0.2)
    process.process.send_signal(signal.SIGTERM)
    sender.join(60)
    response = result["response"]
    assert response.status_code == 200, response.text
    reader = FrameReader(max_frames=16, max_frame_bytes=1 << 24, allow_empty=True)
    reader.feed(response.content)
    outputs = [
        None if f is None else _core.load_ciphertext(client.context, f) for f in reader.finish()
    ]
    assert np.max(np.abs(client.decrypt(outputs, len(x)) - plain(x))) < 1e-5
    assert process.process.wait(timeout=60) == 0
    remote.token = None  # the server is gone with the session
    remote.close()
    with pytest.raises(httpx.TransportError):
        httpx.get(process.url + "/v1/health", timeout=5)


# ---- units: the wire format and the session store -----------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    frames=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=8),
)
def test_a_batch_parses_the_same_however_it_is_chunked(
    frames: list[bytes], cuts: list[int]
) -> None:
    data = encode_batch(frames)  # type: ignore[arg-type]
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    reader = FrameReader(max_frames=8, max_frame_bytes=64)
    for start, end in itertools.pairwise(bounds):
        reader.feed(data[start:end])
    assert reader.finish() == frames
    # Any strict prefix is a truncated batch, never a shorter valid one.
    short = FrameReader(max_frames=8, max_frame_bytes=64)
    short.feed(data[: len(data) - 1])
    with pytest.raises(BatchFormatError):
        short.finish()


def test_the_session_store_expires_idle_sessions_and_enforces_limits() -> None:
    now = [0.0]
    store = SessionStore(max_sessions=2, max_key_bytes=100, idle_timeout_s=10, clock=lambda: now[0])
    a = store.add(object(), 40)
    store.add(object(), 40)
    with pytest.raises(SessionLimitError, match="maximum of 2"):
        store.reserve(1)
    now[0] = 5.0
    assert store.get(a.token) is a  # use keeps it alive
    now[0] = 12.0
    assert store.expire() == 1  # the other one, unused since 0
    with pytest.raises(SessionLimitError, match="key memory"):
        store.reserve(61)
    store.reserve(60)
    now[0] = 30.0
    with pytest.raises(UnknownSessionError, match="expired"):
        store.get(a.token)
    assert len(store) == 0 and store.expired_total == 2
    with pytest.raises(UnknownSessionError):
        store.delete(a.token)


def test_the_client_surfaces_server_refusals_as_typed_errors(
    server: ServerProcess, bundle: Path
) -> None:
    client = Client(spec_of(bundle))
    remote = RemoteSession(server.url, client, retries=0)
    remote.token = "not-a-session"
    with pytest.raises(ServerError) as caught:
        remote.infer(client.encrypt(samples(1, 0)))
    assert caught.value.status == 404 and caught.value.kind == "UnknownSessionError"
    remote.token = None
    remote.close()


# ---- bundles ------------------------------------------------------------------------------------


def test_a_bundle_is_checked_before_it_is_served(bundle: Path, tmp_path: Path) -> None:
    import shutil

    from fheprune.errors import MissingFileError
    from fheprune.runtime import BundleError, SigningKey, load_bundle

    assert load_bundle(bundle).program_fingerprint == spec_of(bundle).program_fingerprint
    with pytest.raises(MissingFileError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")
    lacking = Path(shutil.copytree(bundle, tmp_path / "lacking"))
    (lacking / "client.json").unlink()
    with pytest.raises(MissingFileError, match=r"lacks client\.json"):
        load_bundle(lacking)
    mixed = Path(shutil.copytree(bundle, tmp_path / "mixed"))
    other = save_bundle(toy_compiled(special_bits=51), tmp_path / "other")
    shutil.copy(other / "client.json", mixed / "client.json")
    with pytest.raises(BundleError, match="different compiles"):
        load_bundle(mixed)
    owner = SigningKey.generate()
    signed = save_bundle(toy_compiled(), tmp_path / "signed", signing_key=owner)
    assert (
        load_bundle(signed, owner_key=owner.verify_key).spec.to_json() == spec_of(bundle).to_json()
    )
    with pytest.raises(MissingFileError, match="no signature"):
        load_bundle(bundle, owner_key=owner.verify_key)
    program = bytearray((signed / "program.bin").read_bytes())
    program[-40] ^= 1
    (signed / "program.bin").write_bytes(bytes(program))
    with pytest.raises(_core.MismatchError):
        load_bundle(signed, owner_key=owner.verify_key)


def test_serve_refuses_a_missing_bundle_at_once(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "fheprune", "serve", str(tmp_path / "nowhere"), "--port", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "does not exist" in result.stderr
