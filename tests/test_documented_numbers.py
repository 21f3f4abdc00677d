"""Numbers in README, docs and CHANGELOG against the committed benchmark results.

The rule (docs/benchmarks.md): a measured number sits in a paragraph that names where it
comes from, a results file (``benchmarks/results/NAME.json`` or ``.md``, a results folder) or
the benchmark script that writes it (``benchmarks/NAME.py``, whose results are ``NAME.json``
and ``NAME_quick.json``). Every number with a unit (s, ms, us, min, GB, GiB, MB, MiB, %, x)
in such a paragraph must equal, at the precision it is printed with, some value in those
files (scaled to its unit) whose field is of the unit's kind (``KINDS``: a time from a field
named like a time, a percentage from an accuracy, fraction or ratio, ...), so that a number
cannot pass by coinciding with an unrelated field (an epoch count, a key size). A number
there that is not a result of those files (a budget, a threshold, an earlier run kept for
comparison) is listed in ``NOT_RESULTS`` with why.
And a paragraph that says it reports measurements must name its source.
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENTS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]

# A number with a unit: "1.40 s", "0.78 s", "10.30x", "92.8%", "1.41 GB" (not "2^27", "v1.2").
TOKEN = re.compile(
    r"(?<![\w.^/-])(\d[\d,]*(?:\.\d+)?)(x\b| ?(?:s|ms|us|GB|GiB|MB|MiB|min|%)(?![\w]))"
)
SOURCE = re.compile(r"benchmarks/(?:results/)?([\w-]+)(?:\.(?:json|md|py))?\b")
# Words that say a paragraph reports measurements.
MEASURED = re.compile(r"\bMeasured\b|\bmeasured (with|on|at|in|here|the same)\b")
# A value in the results, as the unit prints it.
SCALES = {
    "x": (1.0,),
    "%": (100.0, 1.0),  # fractions print as percentages; some fields are percentages already
    "s": (1.0,),
    "ms": (1e3, 1.0),  # seconds, or fields already in milliseconds
    "us": (1e6,),
    "min": (1 / 60,),
    "GB": (1e-9,),
    "GiB": (2.0**-30,),
    "MB": (1e-6,),
    "MiB": (2.0**-20,),
}

# The kind of field a unit's number must come from: a pattern one key on the value's path (a
# field name, or the name of a dict it sits in) must match.
_TIME = re.compile(
    r"(_s$|^s$|_s_|_ms$|_us$|seconds|second|time|latency|wall|elapsed|duration"
    r"|^median$|^min$|^max$|^iqr|_runs)"
)
KINDS: dict[str, re.Pattern[str]] = {
    **dict.fromkeys(("s", "ms", "us", "min"), _TIME),
    "%": re.compile(
        r"(accuracy|fraction|sparsity|_left|agreement|degradation|metric|share|percent"
        r"|ratio|rate|precision|error|keep)"
    ),
    "x": re.compile(r"(speedup|ratio|_over_|_vs_|factor|ceiling|^median$|^iqr|gain)"),
    **dict.fromkeys(("GB", "GiB", "MB", "MiB"), re.compile(r"(bytes|memory|rss|size)")),
}

#: Reasons shared by several numbers below.
EARLIER_QUICK_RUN = "the earlier quick run, kept for comparison"
FIRST_LENET_TABLE = "the first matched-effort LeNet-like table, since measured again"
PREVIOUS_OPTIMIZER_RUN = "the previous optimizer run, since replaced"

#: Numbers with a unit in a results-citing paragraph that are not results of its files:
#: (document, the number as printed, a few words right before it) -> why.
NOT_RESULTS: dict[tuple[str, str, str], str] = {
    ("CHANGELOG.md", "70%", "the softmax is 60% to"): "the first tables' profile, since rerun",
    ("CHANGELOG.md", "110.7 s", "`private_training_quick.json`) takes"): (
        "the first quick table, since rerun"
    ),
    ("CHANGELOG.md", "72.94%", "the recipe itself loses accuracy ("): (
        "the first quick table, since rerun"
    ),
    ("CHANGELOG.md", "6.5x", "96.50% and 96.65%. The"): "HEPrune's reported speedup, a target",
    ("CHANGELOG.md", "6.5x", "median 6.73x: HEPrune's"): "HEPrune's reported speedup, a target",
    ("CHANGELOG.md", "6.86x", "against 96 bound it at"): "derived: 96 / 14 training steps",
    ("CHANGELOG.md", "1.2x", "conv models is now within"): "issue 16's bound, a target",
    ("runtime.md", "1.2x", "every layer is within"): "issue 16's bound, a target",
    ("CHANGELOG.md", "60%", "and the softmax is"): "the first tables' profile, since rerun",
    ("CHANGELOG.md", "77.5%", "dense at 92.8% (it was"): EARLIER_QUICK_RUN,
    ("CHANGELOG.md", "28%", "with grouped rows at"): EARLIER_QUICK_RUN,
    ("CHANGELOG.md", "0.832 s", "measured again, see above). Dense"): FIRST_LENET_TABLE,
    ("CHANGELOG.md", "1.15x", "same training, Hunter"): FIRST_LENET_TABLE,
    ("CHANGELOG.md", "1.20x", "Artemis positional"): FIRST_LENET_TABLE,
    ("CHANGELOG.md", "1.13x", "1.20x and diagonal"): FIRST_LENET_TABLE,
    ("CHANGELOG.md", "1.32x", "SpENCNN sub-block"): FIRST_LENET_TABLE,
    ("CHANGELOG.md", "2.07x", "1.32x and combined"): FIRST_LENET_TABLE,
    ("CHANGELOG.md", "3.57x", "ours (combined-cost-aware)"): FIRST_LENET_TABLE,
    ("CHANGELOG.md", "0.233 s", "(combined-cost-aware) 3.57x ("): FIRST_LENET_TABLE,
    ("CHANGELOG.md", "97.88%", "3.57x (0.233 s) at"): FIRST_LENET_TABLE,
    ("CHANGELOG.md", "0.233 s", "the first table had"): "the first table, kept for comparison",
    ("CHANGELOG.md", "97.88%", "the first table had 0.233 s and"): (
        "the first table, kept for comparison"
    ),
    ("CHANGELOG.md", "0.061 s", "(7 repeats), the two take 0.061 and"): PREVIOUS_OPTIMIZER_RUN,
    ("CHANGELOG.md", "1.64x", "Ray workers against one:"): PREVIOUS_OPTIMIZER_RUN,
    ("CHANGELOG.md", "1.73x", "on the MLP (screening"): PREVIOUS_OPTIMIZER_RUN,
    ("CHANGELOG.md", "1.92x", "(screening 1.73x),"): PREVIOUS_OPTIMIZER_RUN,
    ("CHANGELOG.md", "2.10x", "network (screening"): PREVIOUS_OPTIMIZER_RUN,
    ("CHANGELOG.md", "0.61 s", "dense G = 32, runs in"): PREVIOUS_OPTIMIZER_RUN,
    ("rotation_aware.md", "1.27 s", "published LeNet-like ("): "SpENCNN's published time",
    ("rotation_aware.md", "0.15 s", "0.200 s, short of the"): "issue 16's target",
    ("rotation_aware.md", "0.154 s", "(1.27 s dense,"): "SpENCNN's published time",
    ("private-training.md", "60%", "per epoch, the second"): (
        "derived: the kept samples over the second ciphertext's capacity"
    ),
    ("README.md", "2.5%", "sparsity within"): "the budget",
    ("private-training.md", "6.86x", "bound the speedup at 96 / 14,"): "96 / 14 training steps",
    ("private-training.md", "3.97 s", "that bound: the steps here took"): (
        "derived: the 10% run less its encryption and selection, over its 14 steps"
    ),
    ("private-training.md", "3.65 s", "the steps here took 3.97 s each against"): (
        "derived: the full run less its encryption, over its 96 steps"
    ),
    ("CHANGELOG.md", "5.66 s", "had dense at"): "the earlier dilated quick run",
    ("CHANGELOG.md", "4.35x", "at 1.30 s ("): "the earlier dilated quick run",
    ("CHANGELOG.md", "24 GiB", "was killed at"): "the machine's memory, where Orion was killed",
    ("CHANGELOG.md", "1.20x", "(was"): "the earlier run, kept for comparison",
    ("CHANGELOG.md", "12 GiB", "plaintexts exceed"): "a threshold of the script",
    ("rotation_aware.md", "584 s", "per row) took"): "the earlier run, kept for comparison",
    ("rotation_aware.md", "7.1 GB", "on this machine with a"): "peak RSS by /usr/bin/time",
    ("CHANGELOG.md", "7.9 min", "capped at 6 steps):"): "an empty-cache run before the rerun",
    ("CHANGELOG.md", "7.0 min", "entry first quoted,"): "the earlier run this entry quoted",
    ("CHANGELOG.md", "10.6x", "one-round result,"): "the earlier one-round run, superseded",
    ("runtime.md", "1.20x", "gained"): "an earlier run, kept for comparison",
    ("rotation_aware.md", "13 GB", "per row: 7.0 minutes,"): "the earlier run, kept for comparison",
    ("CHANGELOG.md", "1.27 s", "SpENCNN reports"): "SpENCNN's published time, a reference",
    # The first private-training table (validation by encrypted softmax), replaced by the rerun.
    ("CHANGELOG.md", "589.4 s", "full-data training takes"): "the first table, kept for comparison",
    ("CHANGELOG.md", "342.4 s", "HEPrune's mode takes"): "the first table, kept for comparison",
    ("CHANGELOG.md", "180.8 s", "(1.72x) and ours"): "the first table, kept for comparison",
    ("CHANGELOG.md", "3.26x", "and ours 180.8 s ("): "the first table, kept for comparison",
    ("CHANGELOG.md", "175.6 s", "pruning costs"): "the first table, kept for comparison",
    ("CHANGELOG.md", "351.4 s", "of every run ("): "the first table, kept for comparison",
}


def _numbers(obj: object, out: list[tuple[float, tuple[str, ...]]], path: tuple[str, ...]) -> None:
    """Every finite number in ``obj`` with the keys on its path (list items keep their list's)."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        if math.isfinite(obj):
            out.append((float(obj), path))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _numbers(v, out, (*path, str(k)))
    elif isinstance(obj, list):
        for v in obj:
            _numbers(v, out, path)


@cache
def _values(name: str) -> tuple[tuple[float, tuple[str, ...]], ...]:
    paths = [p for p in (RESULTS / f"{name}.json", RESULTS / f"{name}_quick.json") if p.exists()]
    if (RESULTS / name).is_dir():
        paths += sorted((RESULTS / name).glob("*.json"))
    out: list[tuple[float, tuple[str, ...]]] = []
    for path in paths:
        _numbers(json.loads(path.read_text(encoding="utf-8")), out, ())
    return tuple(out)


def _paragraphs(text: str) -> list[tuple[str, str]]:
    """Paragraphs and list items (a CHANGELOG entry is one item), each with the heading of
    its section: a source a heading names holds for the whole section."""
    out = []
    heading = ""
    for para in re.split(r"\n\s*\n|\n(?=\s*- )", text):
        if not para.strip():
            continue
        first = para.lstrip().splitlines()[0]
        if first.startswith("#"):
            heading = first
        out.append((para, heading))
    return out


def printed_as(value: float, text: str, unit: str) -> bool:
    decimals = len(text.split(".")[1]) if "." in text else 0
    target = float(text.replace(",", ""))
    return any(round(value * scale, decimals) == target for scale in SCALES[unit])


def of_kind(path: tuple[str, ...], unit: str) -> bool:
    """Whether a value at ``path`` is the kind of field a number in ``unit`` reports."""
    return any(KINDS[unit].search(key.lower()) for key in path)


def _checked_tokens() -> list[tuple[str, str, str, list[str], bool]]:
    out = []
    for doc in DOCUMENTS:
        for para, heading in _paragraphs(doc.read_text(encoding="utf-8")):
            sources = sorted({m for m in SOURCE.findall(para + heading) if _values(m)})
            if not sources:
                continue
            values = [v for s in sources for v in _values(s)]
            for m in TOKEN.finditer(para):
                number, unit = m.group(1), m.group(2).strip()
                before = " ".join(para[: m.start()].split())
                ok = any(printed_as(v, number, unit) and of_kind(p, unit) for v, p in values)
                out.append((doc.name, m.group(0).strip(), before, sources, ok))
    return out


def test_every_number_of_a_cited_result_matches_the_results() -> None:
    wrong = []
    exempt_used = set()
    for doc, token, before, sources, ok in _checked_tokens():
        key = next(
            (k for k in NOT_RESULTS if k[0] == doc and k[1] == token and before.endswith(k[2])),
            None,
        )
        if key is not None:
            exempt_used.add(key)
            continue
        if not ok:
            wrong.append(f"{doc}: {token!r} after '...{before[-50:]}' is in none of {sources}")
    assert not wrong, "numbers that differ from the committed results:\n" + "\n".join(wrong)
    # An exemption for a number the text no longer has would hide nothing: drop it.
    assert set(NOT_RESULTS) == exempt_used, set(NOT_RESULTS) - exempt_used


def test_paragraphs_that_report_measurements_name_their_source() -> None:
    missing = []
    for doc in DOCUMENTS:
        for para, heading in _paragraphs(doc.read_text(encoding="utf-8")):
            reports = MEASURED.search(para) and TOKEN.search(para)
            if reports and not SOURCE.search(para + heading):
                missing.append(f"{doc.name}: {' '.join(para.split())[:120]}")
    assert not missing, "measured numbers without a results file or script:\n" + "\n".join(missing)


def test_the_checker_catches_a_changed_number() -> None:
    """The matcher is strict: the precision printed is the precision checked."""
    assert printed_as(10.2956, "10.30", "x")
    assert not printed_as(10.2956, "11.4", "x")
    assert printed_as(0.9280, "92.8", "%")
    assert printed_as(1.4e9, "1.40", "GB") and not printed_as(1.4e9, "1.41", "GB")
    assert printed_as(0.0123, "12.3", "ms")
    # A number must come from a field of its unit's kind: a time from a time, not an epoch
    # count or a key size that happens to print the same.
    assert of_kind(("rows", "latency_s"), "s") and of_kind(("runs", "seconds_by_component"), "ms")
    assert not of_kind(("settings", "finetune_epochs"), "x")
    assert not of_kind(("parameters", "special_bits"), "%")
    assert of_kind(("runs", "accuracy"), "%") and not of_kind(("rows", "encode_s"), "%")
    assert of_kind(("rows", "plaintext_bytes"), "GB") and not of_kind(("rows", "rotations"), "min")
    assert [m.group(0).strip() for m in TOKEN.finditer("1.40 s, 2^27 and 4.5x of 92.8%")] == [
        "1.40 s",
        "4.5x",
        "92.8%",
    ]
