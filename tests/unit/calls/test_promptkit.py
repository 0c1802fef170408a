"""``consent-ivr prompts build|import``: a prompt directory serve accepts, or a clear error."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from agi.calls.promptkit import (
    PromptBuildError,
    build_prompts,
    check_prompt_dir,
    import_prompts,
    required_prompt_ids,
)
from agi.calls.prompts import PromptCatalogue
from agi.cli.main import main
from agi.ops.config import Settings, repo_root

SOUNDS = repo_root() / "sounds"
REQUIRED = required_prompt_ids(Settings())
ORG = {"organisation": "Acme Power plc", "freephone": "0800 123 4567"}


def _studio(tmp_path: Path, langs: tuple[str, ...] = ("en", "cy")) -> Path:
    """Recordings laid out as a studio would hand them over: <lang>/<id>.wav."""
    src = tmp_path / "studio"
    for lang in langs:
        (src / lang).mkdir(parents=True)
        for wav in (SOUNDS / lang / "consent-ivr").glob("*.wav"):
            shutil.copyfile(wav, src / lang / wav.name)
    return src


def test_import_of_ready_wavs_keeps_their_bytes_and_writes_a_manifest_serve_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "")  # already 8 kHz mono 16-bit: no sox needed
    out = tmp_path / "out"
    doc = import_prompts(_studio(tmp_path), out, required=REQUIRED, **ORG)
    assert doc["organisation"] == "Acme Power plc"
    catalogue = PromptCatalogue.load(out)
    catalogue.require(REQUIRED)
    identify = catalogue.get("identify", "cy")
    assert "Acme Power plc" in identify.text and "0800 123 4567" in identify.text
    src_bytes = (SOUNDS / "cy" / "consent-ivr" / "identify.wav").read_bytes()
    assert identify.sha256 == hashlib.sha256(src_bytes).hexdigest()
    assert (out / identify.file).read_bytes() == src_bytes
    assert {p.lang for p in catalogue} == {"en", "cy"}


def test_import_names_every_prompt_missing_in_every_language(tmp_path: Path) -> None:
    src = _studio(tmp_path)
    (src / "cy" / "goodbye.wav").unlink()
    (src / "cy" / "opted-in.wav").unlink()
    with pytest.raises(PromptBuildError, match=r"cy: opted-in, goodbye"):
        import_prompts(src, tmp_path / "out", required=REQUIRED, **ORG)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_import_refuses_a_recording_with_no_known_text(tmp_path: Path) -> None:
    src = _studio(tmp_path, ("en",))
    shutil.copyfile(src / "en" / "goodbye.wav", src / "en" / "jingle.wav")
    with pytest.raises(PromptBuildError, match=r"no text for en/jingle"):
        import_prompts(src, tmp_path / "out", required=REQUIRED, **ORG)


def _studio_wav(path: Path, rate: int = 44100, channels: int = 2, seconds: float = 0.5) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = int(rate * seconds)
        w.writeframes(b"".join(struct.pack("<h", (i * 37) % 2000 - 1000) * channels
                               for i in range(frames)))


def test_import_of_a_studio_master_without_sox_names_sox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _studio(tmp_path, ("en",))
    _studio_wav(src / "en" / "goodbye.wav")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(PromptBuildError, match=r"needs sox on PATH"):
        import_prompts(src, tmp_path / "out", required=REQUIRED, **ORG)


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed")
def test_import_converts_a_44k_stereo_flac_master_to_8k_mono(tmp_path: Path) -> None:
    src = _studio(tmp_path, ("en",))
    (src / "en" / "goodbye.wav").unlink()
    _studio_wav(tmp_path / "master.wav")
    subprocess.run(["sox", str(tmp_path / "master.wav"), str(src / "en" / "goodbye.flac")],
                   check=True)
    out = tmp_path / "out"
    import_prompts(src, out, required=REQUIRED, **ORG)
    with wave.open(str(out / "en" / "consent-ivr" / "goodbye.wav"), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        assert abs(w.getnframes() - 4000) < 100


def test_build_without_the_tools_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(PromptBuildError, match=r"needs espeak-ng and sox on PATH"):
        build_prompts(tmp_path, langs=["en"], required=REQUIRED, **ORG)
    code = main(["prompts", "build", "--organisation", "Acme", "--freephone", "0800 123 4567",
                 "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "espeak-ng and sox" in err


def test_build_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(PromptBuildError, match="--freephone"):
        build_prompts(tmp_path, organisation="Acme", freephone="call us", required=REQUIRED)
    with pytest.raises(PromptBuildError, match="--lang"):
        build_prompts(tmp_path, langs=["cy"], required=REQUIRED, **ORG)


@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                    reason="espeak-ng and sox not installed")
def test_build_renders_the_catalogue_for_the_organisation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p"
    assert main(["prompts", "build", "--organisation", "Acme Power plc", "--freephone",
                 "0800 123 4567", "--lang", "en", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["organisation"] == "Acme Power plc"
    catalogue = PromptCatalogue.load(out)
    catalogue.require(REQUIRED)
    for prompt in catalogue:
        assert hashlib.sha256((out / prompt.file).read_bytes()).hexdigest() == prompt.sha256
    assert "Acme Power plc" in catalogue.get("identify", "en").text
    assert "written to" in capsys.readouterr().out
    # the check scripts/make_prompts.py --check runs, for this organisation and language
    assert check_prompt_dir(out, variables=ORG, langs=["en"]) == []
    assert any("manifest text" in e for e in check_prompt_dir(out, langs=["en"]))


def test_check_of_the_repository_prompts_passes_and_names_each_tampering(tmp_path: Path) -> None:
    assert check_prompt_dir(SOUNDS) == []
    copy = tmp_path / "sounds"
    shutil.copytree(SOUNDS, copy)
    with (copy / "cy" / "consent-ivr" / "goodbye.wav").open("ab") as fh:
        fh.write(b"\0\0")
    (copy / "en" / "consent-ivr" / "opted-in.wav").unlink()
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest["prompts"]:
        if (entry["id"], entry["lang"]) == ("identify", "en"):
            entry["text"] = "Hello."
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    errors = check_prompt_dir(copy, catalogue=SOUNDS / "catalogue.toml")
    assert any("('goodbye', 'cy')" in e and "sha256 differs" in e for e in errors), errors
    assert any("('opted-in', 'en')" in e and "is missing" in e for e in errors), errors
    assert any("('identify', 'en'): manifest text 'Hello.'" in e for e in errors), errors
    assert len(errors) == 3, errors


def test_make_prompts_check_runs_on_the_standard_library_alone() -> None:
    """``python3 scripts/make_prompts.py --check`` outside any venv: -S drops site-packages
    (no phonenumbers, no editable install), -I ignores PYTHON* variables and the cwd."""
    proc = subprocess.run(
        [sys.executable, "-S", "-I", str(repo_root() / "scripts" / "make_prompts.py"), "--check"],
        cwd="/", capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    count = sum(1 for _ in PromptCatalogue.load(SOUNDS))
    assert proc.stdout == f"prompts ok: {count} files match the manifest\n"

