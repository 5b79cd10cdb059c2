"""Build stub aarch64 shared libraries for the CUDA libraries that PyPI's aarch64 torch wheel
links to (it is a CUDA build; the stubs stand in for NVIDIA's runtime wheels).

Each stub has the SONAME, version node and every symbol torch's libraries import from that
library. Functions return 100 (like cudaErrorNoDevice), except *String/*Name getters, which
return a pointer to a static string; data symbols are 64 zero bytes. On the CPU path torch
only asks for the device count. With --trace, each called function (the load-time
__cuda* registrations excepted) writes "STUB <name>" to stderr.

    python3 mkstubs.py [--trace] SITE OUTDIR ARMROOT BINUTILS_BIN

SITE: the aarch64 site-packages holding torch/; OUTDIR: where the stubs are built (one file
per library, named by its SONAME, plus .s/.map/.o); ARMROOT: the arm64 runtime (its libraries
are not stubbed); BINUTILS_BIN: the usr/bin of an aarch64 binutils that runs on this host.
Prints one line per stub: SONAME, version node, number of symbols.
"""

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

args = sys.argv[1:]
trace = "--trace" in args
args = [a for a in args if a != "--trace"]
if len(args) != 4:
    sys.exit(__doc__)
site, out, armroot, xbin = map(Path, args)
env = dict(
    os.environ, LD_LIBRARY_PATH=":".join(map(str, (xbin.parent / "lib").glob("*-linux-gnu")))
)
readelf = str(xbin / "aarch64-linux-gnu-readelf")
tl = site / "torch" / "lib"
elfs = sorted(p for p in [*tl.glob("*.so*"), *(site / "torch").glob("_C*.so")] if p.is_file())
if not elfs:
    sys.exit(f"mkstubs: no torch libraries under {site}/torch")
libdirs = [
    d
    for d in (armroot / "lib/aarch64-linux-gnu", armroot / "usr/lib/aarch64-linux-gnu")
    if d.is_dir()
]


def run(*a):
    return subprocess.run(a, check=True, capture_output=True, text=True, env=env).stdout


def dynsyms(path):
    """(type, bind, section index, name) of each dynamic symbol."""
    for line in run(readelf, "--dyn-syms", "-W", str(path)).splitlines():
        f = line.split()
        if len(f) >= 8 and f[0].endswith(":"):
            yield f[3], f[4], f[6], f[7]


avail = {p.name for p in tl.iterdir()} | {p.name for d in libdirs for p in d.iterdir()}
needed_by, missing = {}, set()
for e in elfs:
    needs = re.findall(r"\(NEEDED\).*\[(.+?)\]", run(readelf, "-d", "-W", str(e)))
    needed_by[e] = needs
    missing |= {n for n in needs if n not in avail}
missing.discard("libcuda.so.1")  # only libcaffe2_nvrtc (loaded lazily, for GPU jit) needs it

# symbols defined by what is there: an unversioned import of one of them is not a CUDA symbol
defined = {n.split("@")[0] for e in elfs for _, _, ndx, n in dynsyms(e) if ndx != "UND"}
for d in libdirs:
    for p in d.glob("*.so*"):
        if p.is_file() and not p.is_symlink():
            with contextlib.suppress(subprocess.CalledProcessError):
                defined |= {n.split("@")[0] for _, _, ndx, n in dynsyms(p) if ndx != "UND"}

# for unversioned imports: which missing library a name belongs to, by prefix
prefix = [
    ("nccl", "libnccl.so."),
    ("nvshmem", "libnvshmem_host.so."),
    ("cusparseLt", "libcusparseLt.so."),
    ("cusparse", "libcusparse.so."),
    ("curand", "libcurand.so."),
    ("cuFile", "libcufile.so."),
    ("cupti", "libcupti.so."),
    ("CUpti", "libcupti.so."),
    ("cublasLt", "libcublasLt.so."),
    ("cublas", "libcublas.so."),
    ("cudnn", "libcudnn.so."),
    ("cufft", "libcufft.so."),
    ("cusolver", "libcusolver.so."),
    ("nvrtc", "libnvrtc.so."),
    ("cuda", "libcudart.so."),
]
syms = {m: {} for m in missing}  # library -> {name: (type, version node or None)}
for e in elfs:
    vr = run(readelf, "-V", "-W", str(e))
    vfile, cur = {}, None
    for line in vr.split("Version needs section")[-1].splitlines() if "Version needs" in vr else []:
        m = re.search(r"File: (\S+)", line)
        if m:
            cur = m.group(1)
        m = re.search(r"Name: (\S+)", line)
        if m and cur:
            vfile[m.group(1)] = cur
    for typ, bind, ndx, name in dynsyms(e):
        if ndx != "UND" or not name:
            continue
        ver = None
        if "@" in name:
            name, ver = name.split("@", 1)
            ver = ver.split()[0].lstrip("@")
        lib = vfile.get(ver) if ver else None
        if lib is None:
            if name in defined or bind == "WEAK":
                continue
            cands = [m for m in needed_by[e] if m in missing]
            if not cands:
                continue
            lib = next(
                (c for p, lp in prefix for c in cands if name.startswith(p) and c.startswith(lp)),
                cands[0],
            )
        if lib in syms:
            syms[lib][name] = (typ, ver)

out.mkdir(parents=True, exist_ok=True)
for lib, s in sorted(syms.items()):
    s = s or {"stub_" + re.sub(r"\W", "_", lib): ("FUNC", None)}
    asm = [".text"]
    for name, (typ, _ver) in sorted(s.items()):
        if typ == "OBJECT":
            asm += [
                ".data",
                f".globl {name}",
                f".type {name}, %object",
                f".size {name}, 64",
                ".balign 16",
                f"{name}:",
                ".zero 64",
                ".text",
            ]
            continue
        asm += [f".globl {name}", f".type {name}, %function", ".balign 4", f"{name}:"]
        if trace and not name.startswith("__cuda"):  # write(2, "STUB name\n"), arguments kept
            asm += [
                "mov x9, x0",
                "mov x10, x1",
                "mov x11, x2",
                "mov x0, #2",
                f"adrp x1, msg_{name}",
                f"add x1, x1, :lo12:msg_{name}",
                f"mov x2, #{len(name) + 6}",
                "mov x8, #64",
                "svc #0",
                "mov x0, x9",
                "mov x1, x10",
                "mov x2, x11",
                ".section .rodata",
                f"msg_{name}:",
                f'.ascii "STUB {name}\\n"',
                ".text",
            ]
        if "String" in name or name.endswith("Name"):
            asm += ["adrp x0, stubmsg", "add x0, x0, :lo12:stubmsg", "ret"]
        else:
            asm += ["mov w0, #100", "ret"]
    asm += [".section .rodata", "stubmsg:", '.asciz "stub CUDA library (no GPU)"']
    vers = {v for _, v in s.values() if v}
    vname = vers.pop() if vers else lib
    assert not vers, (lib, vers)
    (out / f"{lib}.s").write_text("\n".join(asm) + "\n")
    (out / f"{lib}.map").write_text(
        f"{vname} {{\n global:\n" + "".join(f"  {n};\n" for n in sorted(s)) + " local: *;\n};\n"
    )
    run(str(xbin / "aarch64-linux-gnu-as"), "-o", str(out / f"{lib}.o"), str(out / f"{lib}.s"))
    run(
        str(xbin / "aarch64-linux-gnu-ld"),
        "-shared",
        "-soname",
        lib,
        "--version-script",
        str(out / f"{lib}.map"),
        "-o",
        str(out / lib),
        str(out / f"{lib}.o"),
    )
    print(lib, vname, len(s), "symbols")
