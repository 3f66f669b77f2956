"""Seeds of the random streams. Each purpose hashes its own tag with the identity of what it draws for, so
no two streams coincide by accident (an SAE init with seed 0, the data order with seed 0 and a synthetic
world with seed 0 are three unrelated streams)."""
import hashlib
import json

INIT_TAG = "treesae/sae-init/1:"    # an SAE's initial weights (runs.Run.init_seed)
DATA_TAG = "treesae/data-order/1:"  # the training batches' order (train.ShuffledOrder)
BOOT_TAG = 0xB007  # bootstrap replicates: numpy's default_rng([seed, BOOT_TAG, ...]), apart from a plain seed's stream


def hashed_seed(tag: str, **ident) -> int:
    """A 63-bit seed from sha256(tag + the identity as sorted JSON)."""
    digest = hashlib.sha256(f"{tag}{json.dumps(ident, sort_keys=True)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
