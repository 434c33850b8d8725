#!/usr/bin/env python3
"""Is a refactor of CUDA code a no-op for the GPU? Compares the machine code of every kernel in
two builds of the same binary (before and after), without a GPU.

    bench/sass_same.py OLD_BINARY NEW_BINARY     # exit 0: every kernel's code is the same

Each binary's cubins are extracted with `cuobjdump -xelf all`; every `.text.<kernel>` section
(one per kernel) is compared byte for byte, by mangled name. Kernels that differ are listed, and
when `nvdisasm` is on PATH the differing instructions are printed too, so a reader can see
whether they are equivalent (e.g. the operands of a commutative add in another order).

Why: the GPU machine is lent for minutes per session. A change that only moves code between
headers or folds duplicated device code into one function can be proven harmless here when the
compiler emits the same instructions for it.

cuobjdump and nvdisasm come with a full CUDA toolkit, or from PyPI (`nvidia-cuda-cuobjdump`,
`nvidia-cuda-nvdisasm`, which unpack to nvidia/cu13/bin/).
"""
import glob
import os
import shutil
import struct
import subprocess
import sys
import tempfile


def text_sections(elf_bytes):
    """{section name: bytes} of an ELF64 little-endian image's `.text.*` sections."""
    d = elf_bytes
    if d[:4] != b"\x7fELF" or d[4] != 2 or d[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF image")
    shoff = struct.unpack_from("<Q", d, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", d, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", d, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx][4]

    def name(off):
        return d[strtab + off:d.index(b"\0", strtab + off)].decode()

    out = {}
    for h in headers:
        n = name(h[0])
        if n.startswith(".text."):
            out[n] = d[h[4]:h[4] + h[5]]
    return out


def tool(name):
    path = shutil.which(name)
    if path is None:
        sys.exit(f"sass_same: {name} not found on PATH (CUDA toolkit, or pip's nvidia-cuda-{name})")
    return path


def kernels_of(binary, workdir):
    """{kernel: code} over all cubins of `binary` (merged by cubin file name and kernel)."""
    os.makedirs(workdir)
    subprocess.run([tool("cuobjdump"), "-xelf", "all", os.path.abspath(binary)], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL)
    out = {}
    for cubin in sorted(glob.glob(os.path.join(workdir, "*.cubin"))):
        with open(cubin, "rb") as f:
            for sec, code in text_sections(f.read()).items():
                out[(os.path.basename(cubin), sec[len(".text."):])] = code
    return out


def compare(old, new):
    """(only in old, only in new, differing) kernel keys of two {kernel: code} maps."""
    return (sorted(set(old) - set(new)), sorted(set(new) - set(old)),
            sorted(k for k in old if k in new and old[k] != new[k]))


def instruction_diff(old_bin, new_bin, kernel):
    """The instructions of `kernel` that differ, as nvdisasm prints them (None without nvdisasm)."""
    if shutil.which("nvdisasm") is None:
        return None

    def sass(b):
        r = subprocess.run([tool("cuobjdump"), "-sass", "-fun", kernel, b], capture_output=True, text=True)
        return [line.split("*/", 1)[1].split("/*")[0].strip() for line in r.stdout.splitlines()
                if line.strip().startswith("/*") and "*/" in line and line.split("*/", 1)[1].strip()]

    a, b = sass(old_bin), sass(new_bin)
    return [(x, y) for x, y in zip(a, b) if x != y] + [(x, "") for x in a[len(b):]] + [("", y) for y in b[len(a):]]


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        old = kernels_of(argv[1], os.path.join(tmp, "old"))
        new = kernels_of(argv[2], os.path.join(tmp, "new"))
    gone, added, differ = compare(old, new)
    print(f"{len(old)} kernels before, {len(new)} after; {len(gone)} gone, {len(added)} new, {len(differ)} differ")
    for k in gone:
        print("  gone:", k[1])
    for k in added:
        print("  new: ", k[1])
    for k in differ:
        print("  differs:", k[1])
        lines = instruction_diff(argv[1], argv[2], k[1])
        for a, b in (lines or [])[:20]:
            print(f"    - {a}\n    + {b}")
    return 0 if not (gone or added or differ) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
