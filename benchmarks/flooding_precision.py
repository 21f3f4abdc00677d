"""What noise flooding costs in precision: the noise measured on decrypted outputs and the
flooding added for shared decryptions (``Client.decrypt_for_sharing``), per statistical
security level, on the main job's MLP (784-128-10, seeded initialization, inputs uniform in
[0, 1]), at its dry-run parameters (2^40 scale) and at a 2^50 scale on N = 16384.

    python benchmarks/flooding_precision.py [--out FILE] [--images 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fheprune import _core
from fheprune.models import build_model
from fheprune.reporting import machine_info, write_json_atomic
from fheprune.runtime import Client, ClientSpec, Server, compile_model

ROOT = Path(__file__).resolve().parent.parent
LEVELS = (16, 24, 32, 40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "flooding_precision.json"
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = build_model("mlp", "mnist").double().eval()
    x = np.random.default_rng(args.seed).uniform(0.0, 1.0, (args.images, 784))
    with torch.no_grad():
        plain = model(torch.from_numpy(x)).numpy()
    choices = {
        "dry run": None,
        "scale 2^50": _core.Parameters(16384, [60, 50, 50], [60], 50),
    }
    runs = []
    for label, parameters in choices.items():
        runs += measure(label, model, parameters, x, plain)
    write_json_atomic(
        args.out,
        {
            "benchmark": "flooding_precision",
            "parameters": {
                "model": "mlp 784-128-10 (seeded init, untrained)",
                "images": args.images,
                "seed": args.seed,
                "shared_decryptions": 1,
            },
            "runs": runs,
            "machine": machine_info(),
        },
    )
    print(f"wrote {args.out}")


def measure(
    label: str, model: torch.nn.Module, parameters: Any, x: np.ndarray, plain: np.ndarray
) -> list[dict[str, Any]]:
    compiled = compile_model(model, layout="tile", tile=(8, 8), parameters=parameters)
    client = Client(ClientSpec.from_compiled(compiled))
    server = Server(compiled.program.save(), client.evaluation_keys_bytes())
    outputs = server.run(client.encrypt(x))
    private = client.decrypt(outputs, len(x))
    runs = []
    for bits in LEVELS:
        shared = client.decrypt_for_sharing(outputs, len(x), statistical_security=bits)
        noise = max(r["noise_std"] for r in client.last_flooding)
        flooding = max(r["flooding_std"] for r in client.last_flooding)
        runs.append(
            {
                "parameters": label,
                "ring": compiled.choice.message,
                "statistical_security": bits,
                "noise_std": noise,
                "flooding_std": flooding,
                "noise_log2": round(math.log2(noise), 2),
                "flooding_log2": round(math.log2(flooding), 2),
                "max_error_private": float(np.max(np.abs(private - plain))),
                "max_error_shared": float(np.max(np.abs(shared - plain))),
                "argmax_agreement": float(np.mean(shared.argmax(1) == plain.argmax(1))),
            }
        )
        print(
            f"{label}, s={bits}: noise 2^{runs[-1]['noise_log2']}, flooding "
            f"2^{runs[-1]['flooding_log2']}, max error {runs[-1]['max_error_shared']:.3g}, "
            f"argmax agreement {runs[-1]['argmax_agreement']:.3f}"
        )
    return runs


if __name__ == "__main__":
    main()
