#!/usr/bin/env python3
"""Rebuild the example regression tables in this folder from two PyPI wheels.

Standalone, standard library only.

Usage::

    pip download --no-deps -d /tmp/wheels vega_datasets==0.9.0 scikit-learn==1.9.1
    mkdir -p /tmp/vega /tmp/sk
    (cd /tmp/vega && unzip -q /tmp/wheels/vega_datasets-0.9.0-py3-none-any.whl)
    (cd /tmp/sk && unzip -q /tmp/wheels/scikit_learn-1.9.1-*.whl)
    python examples/tables/make_tables.py /tmp/vega /tmp/sk

Each argument may also be the ``.whl`` file itself (it is read as a zip).
Outputs (default: the folder holding this script, change with ``--out``):

* ``cars.csv``      from ``vega_datasets/_data/cars.json``
* ``diabetes.csv``  from ``sklearn/datasets/data/diabetes_data_raw.csv.gz``
                    and ``sklearn/datasets/data/diabetes_target.csv.gz``
* ``LICENSE-vega-datasets.txt`` and ``LICENSE-scikit-learn.txt``, byte-for-byte
  copies of the licence files in the wheels' ``*.dist-info`` folders.

Every source file is checked against the sha256 in the wheel's RECORD before
use. Row counts, missing values per column and the sha256 of each output are
printed at the end.
"""

import argparse
import base64
import csv
import gzip
import hashlib
import io
import json
import os
import sys
import zipfile

CARS_JSON = "vega_datasets/_data/cars.json"
DIABETES_DATA = "sklearn/datasets/data/diabetes_data_raw.csv.gz"
DIABETES_TARGET = "sklearn/datasets/data/diabetes_target.csv.gz"
DIABETES_COLUMNS = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
DIABETES_TARGET_NAME = "progression"


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

    def metadata(self):
        meta = {}
        text = self.read(self.dist_info() + "/METADATA").decode("utf-8")
        for line in text.splitlines():
            if not line.strip():
                break  # headers end at the first blank line
            key, _, value = line.partition(":")
            meta.setdefault(key.strip(), value.strip())
        return meta

    def licence_file(self):
        di = self.dist_info()
        for cand in (
            "licenses/COPYING",
            "licenses/LICENSE",
            "COPYING",
            "LICENSE",
            "LICENSE.txt",
            "licenses/LICENSE.txt",
        ):
            if di + "/" + cand in self.names:
                return di + "/" + cand
        sys.exit(f"{self.path}: no licence file in {di}")

    def checked(self, name):
        """Return the bytes of `name`, verified against the wheel's RECORD."""
        data = self.read(name)
        record = self.read(self.dist_info() + "/RECORD").decode("utf-8")
        for row in csv.reader(io.StringIO(record)):
            if row and row[0] == name:
                algo, _, digest = row[1].partition("=")
                got = base64.urlsafe_b64encode(hashlib.new(algo, data).digest())
                if got.rstrip(b"=").decode() != digest:
                    sys.exit(f"{self.path}: {name} does not match RECORD")
                return data
        sys.exit(f"{self.path}: {name} not listed in RECORD")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def make_cars(wheel, out):
    raw = wheel.checked(CARS_JSON).decode("utf-8")
    # Keep every number exactly as written in the JSON (no float round trip).
    records = json.loads(raw, parse_int=str, parse_float=str)
    header = list(records[0].keys())  # column order as shipped
    rows, missing = [], {c: 0 for c in header}
    for i, rec in enumerate(records):
        if list(rec.keys()) != header:
            sys.exit(f"cars.json record {i} has keys {list(rec)!r}, expected {header!r}")
        row = []
        for c in header:
            v = rec[c]
            if v is None:
                missing[c] += 1
                v = ""
            elif not isinstance(v, str):
                sys.exit(f"cars.json record {i}: unexpected value {v!r} in {c}")
            row.append(v)
        rows.append(row)
    path = os.path.join(out, "cars.csv")
    write_csv(path, header, rows)
    return path, header, len(rows), missing


def make_diabetes(wheel, out):
    data = gzip.decompress(wheel.checked(DIABETES_DATA)).decode("ascii").splitlines()
    target = gzip.decompress(wheel.checked(DIABETES_TARGET)).decode("ascii").splitlines()
    data = [line.split() for line in data if line.strip()]
    target = [line.strip() for line in target if line.strip()]
    if len(data) != len(target):
        sys.exit(f"diabetes: {len(data)} feature rows but {len(target)} targets")
    header = DIABETES_COLUMNS + [DIABETES_TARGET_NAME]
    rows = []
    for i, (feats, t) in enumerate(zip(data, target, strict=True)):
        if len(feats) != len(DIABETES_COLUMNS):
            sys.exit(f"diabetes row {i} has {len(feats)} fields")
        for v in feats:
            float(v)  # every feature must be numeric; written verbatim
        # The target file stores integers in numpy's "%.18e" form
        # (e.g. 1.510000000000000000e+02); write them as plain integers.
        tv = float(t)
        if tv != int(tv):
            sys.exit(f"diabetes target {i} is not an integer: {t!r}")
        rows.append(feats + [str(int(tv))])
    path = os.path.join(out, "diabetes.csv")
    write_csv(path, header, rows)
    missing = {c: 0 for c in header}
    return path, header, len(rows), missing


def copy_licence(wheel, out, name):
    src = wheel.licence_file()
    path = os.path.join(out, name)
    with open(path, "wb") as f:
        f.write(wheel.read(src))
    return src, path


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("vega_datasets", help="unzipped vega_datasets wheel (or the .whl)")
    ap.add_argument("scikit_learn", help="unzipped scikit-learn wheel (or the .whl)")
    ap.add_argument("--out", default=here, help="output folder (default: %(default)s)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    vega, sk = Wheel(args.vega_datasets), Wheel(args.scikit_learn)
    for w in (vega, sk):
        m = w.metadata()
        licence = m.get("License-Expression") or m.get("License")
        print(f"{m.get('Name')} {m.get('Version')} ({w.dist_info()}; licence: {licence})")

    for fn, w in ((make_cars, vega), (make_diabetes, sk)):
        path, header, n, missing = fn(w, args.out)
        print(f"\n{path}: {n} rows x {len(header)} columns, sha256 {sha256(path)}")
        for c in header:
            print(f"  {c:<18} missing: {missing[c]}")

    print()
    for w, name in ((vega, "LICENSE-vega-datasets.txt"), (sk, "LICENSE-scikit-learn.txt")):
        src, path = copy_licence(w, args.out, name)
        print(f"{path} <- {src} (sha256 {sha256(path)})")


if __name__ == "__main__":
    main()
