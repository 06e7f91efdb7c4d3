"""Is a baseline comparable with this run? Pure functions over the runs' identities.

A run's **identity** is everything that decides its timings: the full resolved config, the
torch and transformers versions, the device (type and name) and the weights (random with a
seed, or a checkpoint's files). It is computed before any model is built
(:func:`run_identity`) and stored in metrics.json as the top-level section ``identity``
(:data:`IDENTITY_KEY`), so that the next run can refuse a baseline that measured something
else before spending any time:

    identity = run_identity(to_container(cfg), collect_env(device), weights_identity(cfg.model))
    # weights_identity: pytest_dsocr.models.weights (kind, seed, path, index_sha256)
    metrics["identity"] = identity                              # build_metrics(sections=...)
    differences = compatibility_differences(identity_from_metrics(baseline), identity)

Every key is compared except the short :data:`ALLOWLIST` of settings that cannot change a
timing (where outputs go, what the reports contain, the gate's own options, tables used only
for analysis). A metrics.json written before identities existed has no ``identity`` section;
:func:`identity_from_metrics` rebuilds one from its ``config`` and ``env`` sections, and keys
that such an older file does not record are unknown rather than different.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.report.model import RunMetrics

IDENTITY_KEY = "identity"  # top-level section of metrics.json
IDENTITY_VERSION = 1
LEGACY_VERSION = 0  # an identity rebuilt from an older metrics.json's config and env sections
FORCE_OPTION = "--dsocr-baseline-force"
ABSENT = "<absent>"  # shown for a key one identity lacks
# Identity keys (dotted, prefixes) that cannot change a timing, so a difference there is not
# one. Keep this short: anything else that differs makes the runs incomparable.
ALLOWLIST: tuple[str, ...] = (
    "version",  # the identity format itself
    "config.run",  # where the run directory goes
    "config.gate",  # the gate's own options (threshold, per-stage thresholds, inconclusive, pages)
    "config.pipeline",  # which stages run and what they write (pred/, viz/); the measured stage is compared apart
    "config.hardware",  # the peak FLOP/s table used for MFU/MBU only
    "config.static_analysis",  # analytic cost model settings (no inference)
    "config.sweep",  # analytic sweeps (no inference)
    "config.vendor_parity",  # reference comparison settings, read after the runs
    "config.model.device",  # what was asked for ("auto", "cuda:1"); the resolved device is compared instead
)
WEIGHTS = "weights"


@dataclass(frozen=True)
class Difference:
    """One identity key whose value differs between the baseline and this run."""

    key: str  # dotted, e.g. "config.infer.decode_backend", "software.torch", "device.name"
    baseline: Any  # ABSENT when the baseline does not have the key
    current: Any

    def __str__(self) -> str:
        return f"{self.key} ({_show(self.baseline)} vs {_show(self.current)})"

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "baseline": self.baseline, "current": self.current}


def run_identity(config: Mapping[str, Any], env: Mapping[str, Any], weights: Mapping[str, Any] | None) -> dict:
    """The identity of a run: ``{version, config, software, device, weights}``.

    ``config`` is the full resolved config (plain data), ``env`` the ``env`` section
    (``pytest_dsocr.env.collect_env``: ``torch``, ``transformers``, ``device``,
    ``device_name``), ``weights`` what ``pytest_dsocr.models.weights.weights_identity`` returns, or None when the caller
    cannot say (then the weights are not compared). Values the env lacks are left out.
    """
    software = {key: env[key] for key in ("torch", "transformers") if env.get(key) is not None}
    device: dict[str, Any] = {}
    if env.get("device") is not None:
        device["type"] = str(env["device"]).split(":")[0]  # cuda:0 and cuda:1 are the same kind
    if env.get("device_name") is not None:
        device["name"] = env["device_name"]
    return {
        "version": IDENTITY_VERSION,
        "config": copy.deepcopy(dict(config)),
        "software": software,
        "device": device,
        WEIGHTS: copy.deepcopy(dict(weights)) if weights is not None else None,
    }


def identity_from_metrics(metrics: RunMetrics | Mapping[str, Any]) -> dict:
    """The identity stored in a run's metrics (the typed model or its json form), or one rebuilt
    from its ``config`` and ``env`` sections for a metrics.json written before identities were
    recorded.

    A rebuilt identity has ``version`` 0; its weights are what the config declares (random with
    ``model.seed``, or the ``model.path`` checkpoint, without its index hash, which is then unknown).
    """
    if isinstance(metrics, RunMetrics):
        stored, config, env = metrics.identity, metrics.config, metrics.env
    else:
        stored, config, env = metrics.get(IDENTITY_KEY), metrics.get("config"), metrics.get("env")
    if isinstance(stored, Mapping):
        return dict(stored)
    config = config if isinstance(config, Mapping) else {}
    env = env if isinstance(env, Mapping) else {}
    model = config.get("model") if isinstance(config.get("model"), Mapping) else {}
    kind = model.get("weights", "random")  # before model.weights existed the tiny build was random
    if model.get("path") is not None:
        weights: dict[str, Any] | None = {"kind": "checkpoint", "path": str(model["path"])}
    elif kind == "random" and "seed" in model:
        weights = {"kind": "random", "seed": model["seed"]}
    elif kind != "random":
        weights = {"kind": kind}
    else:
        weights = None
    identity = run_identity(config, env, weights)
    identity["version"] = LEGACY_VERSION
    return identity


def compatibility_differences(baseline_identity: Mapping[str, Any], current_identity: Mapping[str, Any]) -> list[Difference]:
    """Every identity key outside :data:`ALLOWLIST` whose value differs, in the current run's key order.

    A key only one identity has is a difference too (shown as ``<absent>`` on the other side),
    unless the identity lacking it was rebuilt from an older metrics.json (``version`` 0):
    there the key was never recorded, so it is unknown rather than different. When either
    side's weights are None (not known), the weights are not compared.
    """
    base, current = _flatten(baseline_identity), _flatten(current_identity)
    skip_weights = baseline_identity.get(WEIGHTS) is None or current_identity.get(WEIGHTS) is None
    legacy_base = baseline_identity.get("version") == LEGACY_VERSION
    legacy_current = current_identity.get("version") == LEGACY_VERSION
    found = []
    for key in [*current, *(k for k in base if k not in current)]:
        if _allowed(key) or (skip_weights and _under(key, WEIGHTS)):
            continue
        if key not in base:
            if not legacy_base:
                found.append(Difference(key, ABSENT, current[key]))
        elif key not in current:
            if not legacy_current:
                found.append(Difference(key, base[key], ABSENT))
        elif base[key] != current[key]:
            found.append(Difference(key, base[key], current[key]))
    return found


def check_compatibility(
    baseline_identity: Mapping[str, Any],
    current_identity: Mapping[str, Any],
    *,
    force: bool,
    force_hint: str = FORCE_OPTION,
) -> list[Difference]:
    """The differences, when ``force`` allows them; a DsocrError naming them when it does not."""
    differences = compatibility_differences(baseline_identity, current_identity)
    if differences and not force:
        raise incompatible_error(differences, force_hint)
    return differences


def incompatible_error(differences: Sequence[Difference], force_hint: str = FORCE_OPTION) -> DsocrError:
    """The one refusal message: every differing key with both values, and how to override."""
    listed = "; ".join(str(d) for d in differences)
    return DsocrError(
        f"baseline is not comparable with this run: it differs in {listed} (baseline vs current); "
        f"compare like with like, or pass {force_hint} to compare anyway"
    )


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of nested mappings; anything else (lists, scalars, None) is a leaf."""
    return dict(_leaves(mapping, prefix))


def _leaves(mapping: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, dotted + ".")
        else:
            yield dotted, value


def _allowed(key: str) -> bool:
    return any(_under(key, prefix) for prefix in ALLOWLIST)


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _show(value: Any) -> str:
    return "null" if value is None else str(value)
