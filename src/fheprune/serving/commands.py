"""The ``serve`` and ``client`` commands of the command line (wired in fheprune.cli).

::

    fheprune serve BUNDLE [--host H] [--port P] [--workers N] [limits...]
    fheprune client keygen   --spec client.json --keys DIR
    fheprune client register --url URL --keys DIR
    fheprune client infer    --keys DIR --input samples.npy --out OUTPUTS
    fheprune client decrypt  --keys DIR --outputs OUTPUTS --out results.npy
    fheprune client delete   --keys DIR

The client's folder (``--keys``) holds its secret key (mode 0600; it never leaves the folder),
the evaluation keys it uploads, a copy of the client spec and, after ``register``, the
server's address and the session token.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fheprune.argtypes import integer, non_negative, positive, seconds
from fheprune.errors import FhepruneError, InputError, MissingFileError
from fheprune.fileio import atomic_write, atomic_write_bytes

LOG = logging.getLogger("fheprune")

SECRET_KEY_FILE = "secret_key.bin"
EVALUATION_KEYS_FILE = "evaluation_keys.bin"
SPEC_FILE = "client.json"
SESSION_FILE = "session.json"


def _port(text: str) -> int:
    value = integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 (any free port) to 65535, got {value}")
    return value


def _megabytes(text: str) -> int:
    return positive(text) << 20


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL, got {text!r}")
    return text


def add_serve_parser(sub: Any, log_levels: tuple[str, ...]) -> None:
    from .config import ServeConfig

    d = ServeConfig()
    serve = sub.add_parser(
        "serve",
        help="serve a compiled bundle over HTTP to many clients",
        description=(
            "Load a bundle (program.bin + client.json, as fheprune run writes under "
            "WORK_DIR/bundles/) once and serve encrypted inference over HTTP: clients register "
            "their evaluation keys, send ciphertexts, get ciphertexts back (docs/serving.md)."
        ),
    )
    serve.add_argument("bundle", type=Path, help="bundle folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=_port, default=8470, help="port (0: any free port)")
    serve.add_argument(
        "--workers", type=positive, default=d.workers, help="concurrent runs (default: cores)"
    )
    serve.add_argument(
        "--engine-threads",
        type=positive,
        default=1,
        help="threads of the engine context all sessions share (keep 1 with several workers)",
    )
    serve.add_argument(
        "--max-queue",
        type=non_negative,
        default=d.max_queue,
        help="requests that may wait for admission (2 x workers run at once); more get 503",
    )
    serve.add_argument("--max-sessions", type=positive, default=d.max_sessions)
    serve.add_argument(
        "--max-key-mb",
        type=_megabytes,
        default=d.max_key_bytes,
        help="all sessions' evaluation keys together, MB",
    )
    serve.add_argument(
        "--idle-timeout",
        type=seconds,
        default=d.idle_timeout_s,
        help="seconds before an unused session is dropped",
    )
    serve.add_argument(
        "--max-request-mb",
        type=_megabytes,
        default=d.max_request_bytes,
        help="largest request body, MB",
    )
    serve.add_argument(
        "--max-groups",
        type=positive,
        default=d.max_groups,
        help="groups of samples per inference request",
    )
    serve.add_argument(
        "--graceful-timeout",
        type=seconds,
        default=d.graceful_timeout_s,
        help="on SIGTERM, seconds the admitted requests get to finish",
    )
    serve.add_argument(
        "--body-timeout",
        type=seconds,
        default=d.body_timeout_s,
        help="seconds a request body may take to arrive (408 after)",
    )
    serve.add_argument("--ssl-certfile", type=Path, default=None, help="serve HTTPS: certificate")
    serve.add_argument("--ssl-keyfile", type=Path, default=None, help="serve HTTPS: private key")
    serve.add_argument("--owner-key", default=None, help="verify the bundle's signatures (hex)")
    serve.add_argument("--ready-file", type=Path, default=None, help="write the URL here once up")
    serve.add_argument(
        "--insecure-test-parameters",
        action="store_true",
        help="accept bundles under parameters below 128-bit security (tests only)",
    )
    serve.add_argument("--log-level", default="INFO", choices=log_levels)


def run_serve(args: argparse.Namespace) -> int:
    from fheprune import _core

    from . import run_server
    from .config import ServeConfig

    if args.insecure_test_parameters:
        LOG.warning("accepting insecure parameters: for tests only")
        _core.allow_insecure_parameter_files(True)
    try:
        config = ServeConfig(
            workers=args.workers,
            engine_threads=args.engine_threads,
            max_queue=args.max_queue,
            max_sessions=args.max_sessions,
            max_key_bytes=args.max_key_mb,
            idle_timeout_s=args.idle_timeout,
            max_request_bytes=args.max_request_mb,
            max_groups=args.max_groups,
            graceful_timeout_s=args.graceful_timeout,
            body_timeout_s=args.body_timeout,
        )
        run_server(
            args.bundle,
            host=args.host,
            port=args.port,
            config=config,
            owner_key=args.owner_key,
            ready_file=args.ready_file,
            tls=None if args.ssl_certfile is None else (args.ssl_certfile, args.ssl_keyfile),
            log_level=args.log_level.lower(),
        )
    except (FhepruneError, OSError) as exc:
        LOG.error("%s", exc)
        return 2
    return 0


# ---- client ----


def add_client_parser(sub: Any, log_levels: tuple[str, ...]) -> None:
    client = sub.add_parser(
        "client",
        help="the client side of fheprune serve: keys, registration, inference, decryption",
        description="The client side of an inference server; the secret key stays in --keys.",
    )
    actions = client.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=text, description=text)
        parser.add_argument("--keys", type=Path, required=True, help="the client's key folder")
        parser.add_argument(
            "--insecure-test-parameters",
            action="store_true",
            help="accept specs under parameters below 128-bit security (tests only)",
        )
        parser.add_argument("--log-level", default="INFO", choices=log_levels)
        return parser

    keygen = action("keygen", "make a secret key and evaluation keys for a client spec")
    keygen.add_argument("--spec", type=Path, required=True, help="client.json of the bundle")
    keygen.add_argument("--owner-key", default=None, help="check the spec's signature (hex)")
    keygen.add_argument("--spec-signature", type=Path, default=None, help="client.sig")
    register = action("register", "check the server's program, upload the evaluation keys")
    register.add_argument("--url", type=_url, required=True)
    infer = action("infer", "encrypt samples, run them on the server, keep the ciphertexts")
    infer.add_argument("--input", type=Path, required=True, help=".npy of samples [count, ...]")
    infer.add_argument("--out", type=Path, required=True, help="folder for the output ciphertexts")
    decrypt = action("decrypt", "decrypt output ciphertexts (on this machine only)")
    decrypt.add_argument("--outputs", type=Path, required=True, help="folder from infer")
    decrypt.add_argument("--out", type=Path, required=True, help=".npy for the results")
    action("delete", "delete the session and its keys on the server")


def _spec_and_client(folder: Path) -> Any:
    from fheprune.runtime.roles import Client, ClientSpec

    for name in (SPEC_FILE, SECRET_KEY_FILE):
        if not (folder / name).is_file():
            raise MissingFileError(
                f"{folder / name} is missing; run 'fheprune client keygen' first"
            )
    spec = ClientSpec.from_json((folder / SPEC_FILE).read_text(encoding="utf-8"))
    return Client(spec, secret_key=(folder / SECRET_KEY_FILE).read_bytes())


def _session(folder: Path) -> dict[str, str]:
    path = folder / SESSION_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} is missing; run 'fheprune client register' first")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not {"url", "session"} <= set(data):
        raise InputError(f"{path} is not a session file (url, session)")
    return {"url": str(data["url"]), "session": str(data["session"])}


def _keygen(args: argparse.Namespace) -> None:
    from fheprune.runtime.roles import Client, ClientSpec

    text = args.spec.read_text(encoding="utf-8")
    signature = args.spec_signature.read_bytes() if args.spec_signature else None
    spec = ClientSpec.from_json(text, signature=signature, owner_key=args.owner_key)
    client = Client(spec)
    args.keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_bytes(args.keys / SECRET_KEY_FILE, client.secret_key_bytes(), mode=0o600)
    keys = client.evaluation_keys_bytes()
    atomic_write_bytes(args.keys / EVALUATION_KEYS_FILE, keys)
    atomic_write_bytes(args.keys / SPEC_FILE, text.encode())
    print(f"keys in {args.keys}: secret key (stays here), evaluation keys ({len(keys)} bytes)")


def _register(args: argparse.Namespace) -> None:
    from fheprune.client import RemoteSession

    client = _spec_and_client(args.keys)
    remote = RemoteSession(args.url, client)
    try:
        remote.check_program()
        token = remote.register()
    finally:
        remote.token = None  # the session outlives this command
        remote.close()
    session = json.dumps({"url": args.url, "session": token}).encode()
    atomic_write_bytes(args.keys / SESSION_FILE, session, mode=0o600)
    print(f"registered with {args.url}; session saved in {args.keys / SESSION_FILE}")


def _infer(args: argparse.Namespace) -> None:
    import numpy as np

    from fheprune.client import RemoteSession

    client = _spec_and_client(args.keys)
    session = _session(args.keys)
    samples = np.load(args.input, allow_pickle=False)
    remote = RemoteSession(session["url"], client)
    try:
        remote.check_program()  # before a single ciphertext leaves
        remote.token = session["session"]
        outputs = remote.infer(client.encrypt(samples))
    finally:
        remote.token = None
        remote.close()
    client.save_ciphertexts(outputs, args.out)
    count = json.dumps({"count": int(samples.shape[0])}).encode()
    atomic_write_bytes(args.out / "count.json", count)
    print(f"{len(outputs)} output ciphertexts for {samples.shape[0]} samples in {args.out}")


def _decrypt(args: argparse.Namespace) -> None:
    import numpy as np

    client = _spec_and_client(args.keys)
    count_file = args.outputs / "count.json"
    if not count_file.is_file():
        raise MissingFileError(f"{count_file} is missing; is {args.outputs} a folder from infer?")
    count = int(json.loads(count_file.read_text())["count"])
    y = client.decrypt(client.load_ciphertexts(args.outputs), count)
    atomic_write(args.out, lambda f: np.save(f, y))
    print(f"results [{y.shape[0]} x {y.shape[1]}] in {args.out}")


def _delete(args: argparse.Namespace) -> None:
    from fheprune.client import RemoteSession

    client = _spec_and_client(args.keys)
    session = _session(args.keys)
    remote = RemoteSession(session["url"], client)
    remote.token = session["session"]
    try:
        remote.delete()  # raises if the server refuses: the session file stays then
    finally:
        remote.token = None
        remote.close()
    (args.keys / SESSION_FILE).unlink()
    print("session deleted")


_ACTIONS: dict[str, Callable[[argparse.Namespace], None]] = {
    "keygen": _keygen,
    "register": _register,
    "infer": _infer,
    "decrypt": _decrypt,
    "delete": _delete,
}


def run_client(args: argparse.Namespace) -> int:
    from fheprune import _core

    if args.insecure_test_parameters:
        LOG.warning("accepting insecure parameters: for tests only")
        _core.allow_insecure_parameter_files(True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    try:
        _ACTIONS[args.action](args)
    except (FhepruneError, OSError, ValueError) as exc:
        LOG.error("%s", exc)
        return 2
    return 0
