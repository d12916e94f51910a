"""The one rule for "the same features": which provenance fields say what a stored number means, how they are
compared and hashed, and the checks built on it.

A store records how it was made (``build_provenance`` in the runner). Stores that differ in an identity field
never mix (:func:`check_compatible`); a run trained on one store only scores or predicts on features that agree
with it in every representation field (:func:`check_representation`); ``predict`` proves it can rebuild the
backbone a run's features came from with the same comparison (:func:`differences`). All of them compare
canonical JSON, so a tuple and a list, or a dict in another key order, are the same value, as they are on disk.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterable

from vidfeat.features.errors import UserError

# Fields that define what a feature *means*; stores that differ in any of them must never mix.
IDENTITY_FIELDS = (
    "kind", "backbone", "weights", "feature_dim", "dtype", "preprocessing", "sampling", "window", "rois",
    "spatial", "flow", "dataset", "classes", "n_folds",
)
# Identity fields added after schema version 1 was fixed: hashed only when set, so stores written before keep
# their provenance hash.
LATER_FIELDS = ("spatial", "flow")
# What a head trained on the features depends on: a head trained on one representation is meaningless on
# another. dtype (fp16 vs fp32 copies of the same features), the dataset's name and fold layout may differ;
# the classes are checked on their own.
REPRESENTATION_FIELDS = tuple(f for f in IDENTITY_FIELDS if f not in ("dtype", "dataset", "classes", "n_folds"))


class ProvenanceMismatch(UserError):
    """Two stores (or a store and a run, or a request) were made differently and must not be mixed."""


def canonical(value: object) -> str:
    """JSON with sorted keys: tuples and lists, or dicts in another order, compare equal as they do on disk."""
    return json.dumps(value, sort_keys=True)


def provenance_hash(provenance: dict) -> str:
    """Hash of the identity fields only, so versions and timestamps don't make equal configs look different."""
    identity = {
        name: provenance.get(name) for name in IDENTITY_FIELDS
        if name not in LATER_FIELDS or provenance.get(name) is not None
    }
    return hashlib.sha256(canonical(identity).encode()).hexdigest()


def differences(
    expected: dict, actual: dict, fields: Iterable[str], labels: tuple[str, str] = ("", "vs")
) -> list[str]:
    """One line per field of ``fields`` whose canonical values differ: ``  name: <expected> vs <actual>``
    (``labels`` name the two sides, e.g. ``("run", "vs store")``)."""
    before, between = (f"{labels[0]} " if labels[0] else ""), labels[1]
    return [
        f"  {name}: {before}{canonical(expected.get(name))} {between} {canonical(actual.get(name))}"
        for name in fields
        if canonical(expected.get(name)) != canonical(actual.get(name))
    ]


def check_compatible(expected: dict, actual: dict, what: str) -> None:
    """Stores: raise ProvenanceMismatch naming every identity field that differs."""
    diffs = differences(expected, actual, IDENTITY_FIELDS)
    if diffs:
        raise ProvenanceMismatch(
            f"{what} was made with a different configuration; refusing to mix them:\n" + "\n".join(diffs)
            + "\nUse a different output file for a different configuration."
        )


def check_representation(
    trained: dict, actual: dict, what: str, advice: str,
    trained_classes: list[str] | None = None, classes: list[str] | None = None,
) -> None:
    """Runs: refuse features (``actual``, a store's provenance) that mean something else than what a head was
    trained on (``trained``, the run's recorded store provenance), naming each differing field, and then
    ``advice``. With both class lists (the run's, the store's; None for a store of unlabelled videos), they must
    be equal too."""
    diffs = differences(trained, actual, REPRESENTATION_FIELDS, ("run", "vs store"))
    if trained_classes is not None and classes is not None and trained_classes != classes:
        diffs.append(f"  classes: run has {len(trained_classes)} ({trained_classes[:5]}...) "
                     f"vs store {len(classes)} ({classes[:5]}...)")
    if diffs:
        raise ProvenanceMismatch(f"{what} does not hold the features this run was trained on:\n"
                                 + "\n".join(diffs) + f"\n{advice}")
