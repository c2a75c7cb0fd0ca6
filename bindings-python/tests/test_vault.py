"""Offsite vaulting from Python: copy to a second store with its own key, restore from it alone."""

import shutil
from pathlib import Path

import alike
from conftest import write_image


def test_vault_then_restore_from_the_vault_alone(tmp: Path, store: alike.Store) -> None:
    img = tmp / "d.img"
    want = write_image(img, 8 << 20, seed=4)
    v = store.backup(vm="web", disks=[img]).version
    with alike.Store.create(tmp / "vault", passphrase="vault", cache_dir=tmp / "vc", insecure_fast_kdf=True) as vault:
        r = store.vault(vault)
        assert [s for s, _ in r.copied] == [v.id] and r.sent_bytes > 0
        again = store.vault(vault)
        assert again.copied == () and again.already == (v.id,)
    store.close()
    shutil.rmtree(tmp / "store")
    with alike.Store.open(tmp / "vault", passphrase="vault", cache_dir=tmp / "fresh") as vault:
        assert vault.verify(full=True).ok
        vault.restore("latest", output=tmp / "o.img", vm="web")
        assert (tmp / "o.img").read_bytes() == want
