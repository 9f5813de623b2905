"""Random container names of the form adjective_noun, like Docker's.

The word lists are our own: sea and boat words, for a project named skiff.
"""

from __future__ import annotations

import secrets

ADJECTIVES = (
    "agile", "amber", "bold", "brave", "breezy", "bright", "brisk", "calm", "clever", "coral",
    "crisp", "daring", "deep", "eager", "fair", "fast", "gentle", "glassy", "golden", "happy",
    "hardy", "keen", "kind", "lively", "lucky", "mellow", "misty", "nimble", "noble", "placid",
    "proud", "quick", "quiet", "rapid", "salty", "serene", "sharp", "silver", "sleek", "snug",
    "steady", "stormy", "sturdy", "sunny", "swift", "tidal", "trim", "vivid", "wary", "windy",
)
NOUNS = (
    "anchor", "bay", "beacon", "buoy", "cape", "compass", "cove", "current", "delta", "dinghy",
    "dory", "dune", "estuary", "ferry", "fjord", "gull", "harbor", "helm", "inlet", "isle",
    "jetty", "keel", "kelp", "lagoon", "mast", "mooring", "oar", "otter", "pelican", "pier",
    "puffin", "raft", "reef", "rudder", "sail", "schooner", "seal", "shoal", "skiff", "sloop",
    "sound", "spray", "strait", "swell", "tern", "tide", "wake", "wave", "wharf", "yawl",
)


def generate() -> str:
    return f"{secrets.choice(ADJECTIVES)}_{secrets.choice(NOUNS)}_{secrets.randbelow(1000)}"
