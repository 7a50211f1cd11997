"""``spnas.frameworks.import_hiding``: an optional dependency is hidden during one import only."""

from __future__ import annotations

import sys


def test_a_hidden_module_is_missing_for_that_import_and_importable_after(tmp_path, monkeypatch):
    from spnas.frameworks import import_hiding

    (tmp_path / "spnas_fw_host.py").write_text("try:\n    import spnas_fw_extra\nexcept ImportError:\n"
                                               "    spnas_fw_extra = None\n")
    (tmp_path / "spnas_fw_extra.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        host = import_hiding("spnas_fw_host", ("spnas_fw_extra",))
        assert host.spnas_fw_extra is None and "spnas_fw_extra" not in sys.modules
        assert import_hiding("spnas_fw_host", ()) is host  # imported once
        import spnas_fw_extra

        assert spnas_fw_extra.LOADED
    finally:
        for name in ("spnas_fw_host", "spnas_fw_extra"):
            sys.modules.pop(name, None)
