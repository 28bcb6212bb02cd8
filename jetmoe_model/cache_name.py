"""The KV cache's name in transformers' interfaces, which changed between the releases our pins allow.

transformers <= 5.23 passes the cache to a model's forward as `past_key_values` and reads it back from the output's
`past_key_values` field. transformers 5.24 renamed both to `cache`: `generate` passes `cache=` and reads
`outputs["cache"]`, and `past_key_values` survives only as a deprecated alias (slated for removal). A forward that
reads only one name silently runs without its cache on the other releases, so ours accept both and return the cache
in the field the installed transformers reads.
"""

from transformers.modeling_outputs import MoeModelOutputWithPast

# "cache" on transformers >= 5.24, "past_key_values" on <= 5.23: the output field, and the keyword `generate` passes.
CACHE_NAME = "cache" if "cache" in MoeModelOutputWithPast.__dataclass_fields__ else "past_key_values"

# The keywords a caller may use for the cache on every supported release (accelerate must not move it to a device).
CACHE_KEYWORDS = ("cache", "past_key_values")


def given_cache(cache=None, past_key_values=None):
    """The cache a forward was given under either name (`cache`: transformers >= 5.24, `past_key_values`: <= 5.23
    and callers of the older name); both may be given only as the same object."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("two different caches given, as `cache` and as `past_key_values`: pass one")
    return cache if cache is not None else past_key_values
