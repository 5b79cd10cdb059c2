#!/usr/bin/env python3
"""Rebuild the benchmark regression tables in this folder from four PyPI wheels.

Standalone, standard library only.

Usage::

    pip download --no-deps -d /tmp/wheels ISLP==0.6.0 palmerpenguins==0.1.6 \\
        plotnine==0.15.9 statsmodels==0.15.0
    python bench/tables/make_collection.py /tmp/wheels/*.whl

Each argument is one wheel: the ``.whl`` file itself (read as a zip) or a
folder it was unzipped into; they may come in any order (each is recognised by
its ``*.dist-info/METADATA``). The package name and version must be the pinned
ones below. A ``.whl`` file is also checked against the pinned sha256 of the
wheel (an unzipped folder cannot be; only its RECORD is checked).

Outputs (default: the folder holding this script, change with ``--out``):

* one CSV per table (see ``TABLES``): UTF-8, header row, ``\\n`` line ends,
  ``csv.QUOTE_MINIMAL``, a missing value is an empty field. Every cell is the
  source file's text, copied verbatim; the only change is that the source's
  missing-value token (``NA`` in the R-exported files of palmerpenguins and
  plotnine) becomes an empty field, and quoting follows QUOTE_MINIMAL;
* ``LICENSE-<package>.txt`` for each of the four packages (the licence file in
  the wheel's ``*.dist-info``, byte for byte; ISLP's wheel has no licence file,
  so ``LICENSE-ISLP.txt`` is the ``License:`` field of its METADATA, see
  ``licence_text``);
* ``collection.json``: one entry per table (name, path, target, missing,
  exclude, rows, target_mean, text_columns), computed from the written CSVs.

Every source file is checked against the sha256 in its wheel's RECORD before
use. Row counts, missing values per column and the sha256 of every output are
printed, then a summary table.
"""

import argparse
import base64
import csv
import hashlib
import io
import json
import math
import os
import re
import sys
import zipfile

# Pinned wheels: package name (as in METADATA) -> (version, wheel sha256).
# All four are the files pip chose for CPython 3.11 on x86-64 Linux; only
# statsmodels is platform specific (its data files are not).
WHEELS = {
    "ISLP": (
        "0.6.0",
        "islp-0.6.0-py3-none-any.whl",
        "ca772cecca1747a2f84ee799a5503ddddbdf0e98f90c235494790c1d036c694b",
    ),
    "palmerpenguins": (
        "0.1.6",
        "palmerpenguins-0.1.6-py3-none-any.whl",
        "5c3be9af84dd703a25f1aaeadeac6ac770cfd38c1620d00089f581c023129ee0",
    ),
    "plotnine": (
        "0.15.9",
        "plotnine-0.15.9-py3-none-any.whl",
        "36f4526235b3ddd9ea379dd677093ea2ee1b58ab98adec1bde891930283448cd",
    ),
    "statsmodels": (
        "0.15.0",
        "statsmodels-0.15.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        "b67886b66d9c7ca118526accedb5c6de7ffd74c015dc0492ea0b1690192b65da",
    ),
}

# One entry per output table.
#   na:      source cell texts that mean "missing" (written as an empty field)
#   target:  the natural numeric target column
#   exclude: columns that must not be features (identifiers, or columns that
#            are the target in another form / contain it)
#   shape:   (rows, columns) the source must have
TABLES = [
    dict(
        name="hitters",
        package="ISLP",
        src="ISLP/data/Hitters.csv",
        na={""},
        target="Salary",
        exclude=[],
        shape=(322, 20),
    ),
    dict(
        name="college",
        package="ISLP",
        src="ISLP/data/College.csv",
        na={""},
        target="Outstate",
        exclude=[],
        shape=(777, 18),
    ),
    dict(
        name="carseats",
        package="ISLP",
        src="ISLP/data/Carseats.csv",
        na={""},
        target="Sales",
        exclude=[],
        shape=(400, 11),
    ),
    dict(
        name="boston",
        package="ISLP",
        src="ISLP/data/Boston.csv",
        na={""},
        target="medv",
        exclude=[],
        shape=(506, 13),
    ),
    dict(
        name="wage",
        package="ISLP",
        src="ISLP/data/Wage.csv",
        na={""},
        target="wage",
        exclude=["logwage"],
        shape=(3000, 11),
    ),
    dict(
        name="bikeshare",
        package="ISLP",
        src="ISLP/data/Bikeshare.csv",
        na={""},
        target="bikers",
        exclude=["casual", "registered"],
        shape=(8645, 15),
    ),
    dict(
        name="credit",
        package="ISLP",
        src="ISLP/data/Credit.csv",
        na={""},
        target="Balance",
        exclude=["ID"],
        shape=(400, 12),
    ),
    dict(
        name="penguins",
        package="palmerpenguins",
        src="palmerpenguins/data/penguins.csv",
        na={"NA"},
        target="body_mass_g",
        exclude=[],
        shape=(344, 8),
    ),
    dict(
        name="diamonds",
        package="plotnine",
        src="plotnine/data/diamonds.csv",
        na={"NA"},
        target="price",
        exclude=[],
        shape=(53940, 10),
    ),
    dict(
        name="msleep",
        package="plotnine",
        src="plotnine/data/msleep.csv",
        na={"NA"},
        target="sleep_total",
        exclude=["name", "genus", "awake"],
        shape=(83, 11),
    ),
    dict(
        name="txhousing",
        package="plotnine",
        src="plotnine/data/txhousing.csv",
        na={"NA"},
        target="median",
        exclude=["volume"],
        shape=(8602, 9),
    ),
    dict(
        name="fair",
        package="statsmodels",
        src="statsmodels/datasets/fair/fair.csv",
        na={""},
        target="affairs",
        exclude=[],
        shape=(6366, 9),
    ),
    dict(
        name="statecrime",
        package="statsmodels",
        src="statsmodels/datasets/statecrime/statecrime.csv",
        na={""},
        target="murder",
        exclude=["state", "violent"],
        shape=(51, 8),
    ),
    dict(
        name="grunfeld",
        package="statsmodels",
        src="statsmodels/datasets/grunfeld/grunfeld.csv",
        na={""},
        target="invest",
        exclude=[],
        shape=(220, 5),
    ),
]

# Cell texts that look like a missing-value marker. If one of them occurs in a
# table whose `na` does not name it, the script stops instead of guessing.
SUSPECT_NA = {"", "NA", "NaN", "nan", "N/A", "NULL", "None", "."}
NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class Wheel:
    """Read files from an unzipped wheel folder or from a .whl file."""

    def __init__(self, path):
        self.path = path
        if os.path.isdir(path):
            self._zip = None
            names = []
            for root, _dirs, files in os.walk(path):
                for f in files:
                    rel = os.path.relpath(os.path.join(root, f), path)
                    names.append(rel.replace(os.sep, "/"))
            self.names = names
        else:
            self._zip = zipfile.ZipFile(path)
            self.names = self._zip.namelist()
        self._record = None

    def read(self, name):
        if self._zip is not None:
            return self._zip.read(name)
        with open(os.path.join(self.path, *name.split("/")), "rb") as f:
            return f.read()

    def dist_info(self):
        dirs = sorted(
            {n.split("/")[0] for n in self.names if n.split("/")[0].endswith(".dist-info")}
        )
        if len(dirs) != 1:
            sys.exit(f"{self.path}: expected one *.dist-info folder, found {dirs!r}")
        return dirs[0]

    def metadata_text(self):
        return self.read(self.dist_info() + "/METADATA").decode("utf-8")

    def metadata(self):
        meta = {}
        for line in self.metadata_text().splitlines():
            if not line.strip():
                break  # headers end at the first blank line
            if line[:1] in (" ", "\t"):
                continue  # continuation of a multi-line field
            key, _, value = line.partition(":")
            meta.setdefault(key.strip(), value.strip())
        return meta

    def checked(self, name):
        """Return the bytes of `name`, verified against the wheel's RECORD."""
        data = self.read(name)
        if self._record is None:
            self._record = self.read(self.dist_info() + "/RECORD").decode("utf-8")
        for row in csv.reader(io.StringIO(self._record)):
            if row and row[0] == name:
                algo, _, digest = row[1].partition("=")
                got = base64.urlsafe_b64encode(hashlib.new(algo, data).digest())
                if got.rstrip(b"=").decode() != digest:
                    sys.exit(f"{self.path}: {name} does not match RECORD")
                return data
        sys.exit(f"{self.path}: {name} not listed in RECORD")


def licence_text(wheel):
    """(source description, bytes) of the wheel's licence.

    The licence file in ``*.dist-info`` when there is one, byte for byte.
    Otherwise the value of the ``License:`` field of METADATA: its first line
    after ``License: ``, and each continuation line with the 8 spaces of
    header folding removed (a line of only spaces becomes empty); the lines are
    joined with ``\\n`` and end with one ``\\n``.
    """
    di = wheel.dist_info()
    for cand in (
        "licenses/LICENSE",
        "licenses/LICENSE.txt",
        "licenses/COPYING",
        "LICENSE",
        "LICENSE.txt",
        "COPYING",
    ):
        if di + "/" + cand in wheel.names:
            name = di + "/" + cand
            return name, wheel.checked(name)
    name = di + "/METADATA"
    lines = wheel.checked(name).decode("utf-8").split("\n")
    for i, line in enumerate(lines):
        if line.startswith("License: "):
            out = [line[len("License: ") :]]
            for cont in lines[i + 1 :]:
                if cont.startswith("        "):
                    out.append(cont[8:])
                elif cont.strip() == "" and cont != "":
                    out.append("")
                else:
                    break
            while out and out[-1] == "":
                out.pop()
            return name + " (License: field)", ("\n".join(out) + "\n").encode("utf-8")
        if line == "":
            break
    sys.exit(f"{wheel.path}: no licence file in {di} and no License: field")


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha256(path):
    with open(path, "rb") as f:
        return sha256_bytes(f.read())


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def make_table(spec, wheel, out):
    raw = wheel.checked(spec["src"])
    text = raw.decode("utf-8")
    if "\r" in text:
        sys.exit(f"{spec['src']}: unexpected CR in the file")
    records = list(csv.reader(io.StringIO(text, newline="")))
    header, body = records[0], records[1:]
    if (len(body), len(header)) != spec["shape"]:
        sys.exit(f"{spec['src']}: {len(body)} x {len(header)}, expected {spec['shape']}")
    if len(set(header)) != len(header):
        sys.exit(f"{spec['src']}: duplicate column names")
    for col in [spec["target"], *spec["exclude"]]:
        if col not in header:
            sys.exit(f"{spec['src']}: no column {col!r}")
    rows = []
    for i, rec in enumerate(body):
        if len(rec) != len(header):
            sys.exit(f"{spec['src']} row {i + 1}: {len(rec)} fields, expected {len(header)}")
        row = []
        for v in rec:
            if v in spec["na"]:
                v = ""
            elif v in SUSPECT_NA:
                sys.exit(f"{spec['src']} row {i + 1}: cell {v!r} looks like a missing value")
            row.append(v)
        rows.append(row)
    path = os.path.join(out, spec["name"] + ".csv")
    write_csv(path, header, rows)
    return path, header, rows, sha256_bytes(raw)


def describe(spec, header, rows):
    """Per-column facts and the collection.json entry, from the written rows."""
    cols = {}
    for j, c in enumerate(header):
        vals = [r[j] for r in rows]
        present = [v for v in vals if v != ""]
        numeric = all(NUMBER.match(v) for v in present)
        info = dict(missing=len(vals) - len(present), numeric=numeric, distinct=len(set(present)))
        if numeric and present:
            nums = [float(v) for v in present]
            info.update(min=min(nums), max=max(nums), mean=math.fsum(nums) / len(nums))
        cols[c] = info
    tgt = cols[spec["target"]]
    if not tgt["numeric"]:
        sys.exit(f"{spec['name']}: target {spec['target']} is not numeric")
    used = [c for c in header if c not in spec["exclude"]]
    used_idx = [header.index(c) for c in used]
    complete = sum(1 for r in rows if all(r[j] != "" for j in used_idx))
    entry = {
        "name": spec["name"],
        "path": None,  # filled in by main()
        "target": spec["target"],
        "missing": "drop" if any(cols[c]["missing"] for c in used) else "refuse",
        "exclude": list(spec["exclude"]),
        "rows": len(rows),
        "target_mean": round(tgt["mean"], 6),
        "text_columns": [c for c in header if not cols[c]["numeric"]],
    }
    return cols, entry, complete


def fmt(x):
    return f"{x:.6g}"


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "wheels", nargs="+", help="the four wheels (.whl files or unzipped folders), any order"
    )
    ap.add_argument("--out", default=here, help="output folder (default: %(default)s)")
    ap.add_argument(
        "--prefix",
        default="bench/tables",
        help="folder written before each file name in collection.json's "
        "'path' (default: %(default)s)",
    )
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    wheels = {}
    for p in args.wheels:
        w = Wheel(p)
        m = w.metadata()
        name, version = m.get("Name"), m.get("Version")
        if name not in WHEELS:
            sys.exit(f"{p}: package {name!r} is not one of {sorted(WHEELS)}")
        want_version, _fname, want_sha = WHEELS[name]
        if version != want_version:
            sys.exit(f"{p}: {name} {version}, expected {want_version}")
        if name in wheels:
            sys.exit(f"{p}: {name} given twice")
        if os.path.isfile(p):
            got = sha256(p)
            if got != want_sha:
                sys.exit(f"{p}: sha256 {got}, expected {want_sha}")
            note = f"wheel sha256 {got} (as pinned)"
        else:
            note = "unzipped folder: wheel sha256 not checked, RECORD is"
        lic = m.get("License-Expression") or m.get("License")
        print(f"{name} {version} ({w.dist_info()}; licence: {lic}; {note})")
        wheels[name] = w
    missing_pkgs = sorted(set(WHEELS) - set(wheels))
    if missing_pkgs:
        sys.exit(f"missing wheels: {missing_pkgs}")

    collection, summary, outputs = [], [], []
    for spec in TABLES:
        path, header, rows, src_sha = make_table(spec, wheels[spec["package"]], args.out)
        cols, entry, complete = describe(spec, header, rows)
        entry["path"] = (
            f"{args.prefix}/{os.path.basename(path)}" if args.prefix else os.path.basename(path)
        )
        collection.append(entry)
        out_sha = sha256(path)
        outputs.append((os.path.basename(path), out_sha))
        print(f"\n{path}: {len(rows)} rows x {len(header)} columns, sha256 {out_sha}")
        print(f"  source {spec['package']}:{spec['src']} sha256 {src_sha} (matches RECORD)")
        for c in header:
            i = cols[c]
            kind = (
                f"number {fmt(i['min'])} .. {fmt(i['max'])}"
                if i["numeric"] and "min" in i
                else f"text, {i['distinct']} distinct"
            )
            flag = (
                " [target]"
                if c == spec["target"]
                else (" [exclude]" if c in spec["exclude"] else "")
            )
            print(f"  {c:<18} missing: {i['missing']:<5} {kind}{flag}")
        summary.append(
            (
                spec["name"],
                len(rows),
                len(header),
                spec["target"],
                entry["target_mean"],
                sum(i["missing"] for i in cols.values()),
                complete,
                entry["missing"],
                entry["text_columns"],
            )
        )

    print()
    for pkg in WHEELS:
        src, data = licence_text(wheels[pkg])
        path = os.path.join(args.out, f"LICENSE-{pkg}.txt")
        with open(path, "wb") as f:
            f.write(data)
        outputs.append((os.path.basename(path), sha256(path)))
        print(f"{path} <- {src} (sha256 {sha256(path)})")

    cpath = os.path.join(args.out, "collection.json")
    with open(cpath, "w", encoding="utf-8", newline="\n") as f:
        json.dump(collection, f, indent=2)
        f.write("\n")
    outputs.append(("collection.json", sha256(cpath)))
    print(f"{cpath}: {len(collection)} tables (sha256 {sha256(cpath)})")

    print("\nsha256 of the outputs:")
    for name, digest in outputs:
        print(f"{digest}  {name}")

    print("\nSummary ('complete' = rows with no missing value outside the excluded columns):")
    head = (
        "name",
        "rows",
        "cols",
        "target",
        "target mean",
        "missing cells",
        "complete",
        "missing",
        "text columns",
    )
    table = [head] + [
        (n, str(r), str(c), t, fmt(m), str(mc), str(cr), pol, ", ".join(tc) or "-")
        for n, r, c, t, m, mc, cr, pol, tc in summary
    ]
    widths = [max(len(row[k]) for row in table) for k in range(len(head))]
    for k, row in enumerate(table):
        print(
            "  ".join(
                v.ljust(widths[j]) if j in (0, 3, 7, 8) else v.rjust(widths[j])
                for j, v in enumerate(row)
            ).rstrip()
        )
        if k == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
