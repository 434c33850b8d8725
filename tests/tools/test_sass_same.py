"""bench/sass_same.py on host ELF objects built here with -ffunction-sections (one .text.<fn>
section per function, as a cubin has one per kernel), through a stand-in cuobjdump that
"extracts" the given object as the binary's cubin."""
import os
import shutil
import stat
import subprocess
import sys

import pytest

ROOT = os.environ.get("PIE_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import sass_same  # noqa: E402

CC = shutil.which("cc") or shutil.which("gcc")


def build(tmp, name, body):
    src = tmp / f"{name}.c"
    src.write_text(body)
    obj = tmp / f"{name}.o"
    subprocess.run([CC, "-O2", "-ffunction-sections", "-c", str(src), "-o", str(obj)], check=True)
    return obj


A = "int f(int a, int b) { return a * b + 3; }\nint g(int a) { return a - 7; }\n"
A_MOVED = "int g(int a) { return a - 7; }\nint f(int a, int b) { return a * b + 3; }\n"  # same code, other order
A_CHANGED = "int f(int a, int b) { return a * b + 4; }\nint g(int a) { return a - 7; }\n"


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_text_sections_one_per_function(tmp_path):
    secs = sass_same.text_sections(build(tmp_path, "a", A).read_bytes())
    assert {".text.f", ".text.g"} <= set(secs)
    assert all(len(code) > 0 for code in secs.values())


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_compare_same_code_in_another_order_and_a_changed_constant(tmp_path):
    a = sass_same.text_sections(build(tmp_path, "a", A).read_bytes())
    moved = sass_same.text_sections(build(tmp_path, "m", A_MOVED).read_bytes())
    changed = sass_same.text_sections(build(tmp_path, "c", A_CHANGED).read_bytes())
    assert sass_same.compare(a, moved) == ([], [], [])
    assert sass_same.compare(a, changed) == ([], [], [".text.f"])
    gone, added, differ = sass_same.compare(a, {".text.f": a[".text.f"], ".text.h": b"x"})
    assert gone == [".text.g"] and added == [".text.h"] and differ == []


def test_text_sections_rejects_what_is_not_elf64():
    with pytest.raises(ValueError):
        sass_same.text_sections(b"not an elf image at all")


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_main_exit_status_through_a_stand_in_cuobjdump(tmp_path):
    """The 'binaries' are the objects themselves: the stand-in copies its last argument into the
    working directory as a .cubin, which is what `cuobjdump -xelf all BIN` leaves there."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "cuobjdump"
    fake.write_text('#!/bin/sh\nfor a; do last="$a"; done\ncp "$last" "$(basename "$last").cubin"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    old, moved, changed = build(tmp_path, "a", A), build(tmp_path, "m", A_MOVED), build(tmp_path, "c", A_CHANGED)
    # one cubin name for both sides, as two builds of one binary give
    (tmp_path / "o").mkdir(); (tmp_path / "n").mkdir(); (tmp_path / "x").mkdir()
    shutil.copy(old, tmp_path / "o" / "t.o"); shutil.copy(moved, tmp_path / "n" / "t.o")
    shutil.copy(changed, tmp_path / "x" / "t.o")
    env = dict(os.environ, PATH=f"{bindir}:/usr/bin:/bin")
    run = lambda a, b: subprocess.run([sys.executable, os.path.join(ROOT, "bench", "sass_same.py"), str(a), str(b)],
                                      capture_output=True, text=True, env=env)
    same = run(tmp_path / "o" / "t.o", tmp_path / "n" / "t.o")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "0 differ" in same.stdout
    diff = run(tmp_path / "o" / "t.o", tmp_path / "x" / "t.o")
    assert diff.returncode == 1 and "differs: f" in diff.stdout
