"""An optional package that is installed but cannot load (a CUDA torchaudio next to a CPU torch) must not
stop the pack from importing: it is hidden from transformers and diffusers."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_torchaudio_that_does_not_load_is_hidden_and_the_pack_imports(tmp_path):
    # A stand-in for the registry's CUDA wheel: present on disk, fails to load as that wheel does.
    broken = tmp_path / "torchaudio"
    broken.mkdir()
    (broken / "__init__.py").write_text(
        "raise OSError('Could not load this library: _torchaudio.so (built for another torch)')\n")
    script = textwrap.dedent("""
        import importlib.util, logging, sys
        logging.basicConfig(level=logging.WARNING)
        assert importlib.util.find_spec("torchaudio") is not None
        import transformers.utils.import_utils as tiu
        assert tiu.is_torchaudio_available()  # by presence on disk, as transformers decides
        import slowfast_vgen  # hides it before any model is imported
        from transformers import CLIPTextModel  # noqa: F401
        import transformers.utils as tu
        assert not tiu.is_torchaudio_available() and not tu.is_torchaudio_available()
        assert "torchaudio" not in sys.modules
        print("hidden:", slowfast_vgen.host_compat.import_problem("torchaudio") is not None)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hidden: True" in result.stdout
    assert "torchaudio is installed but does not load (OSError: Could not load this library" in result.stderr
    assert "pip uninstall torchaudio" in result.stderr


def test_nothing_is_hidden_when_the_packages_are_absent_or_load():
    from slowfast_vgen.host_compat import hide_broken_optional_packages

    assert hide_broken_optional_packages() == []
