#!/usr/bin/env bash
# Mutation testing (mutmut 3): each module where a wrong number would go unnoticed, mutated
# alone, against its own fast tests. Not part of CI: it takes tens of minutes (see README).
#   ./run.sh mutate                     every module below, in this order
#   ./run.sh mutate evaluation config   some of them
# Each module runs in its own copy of the repo under $MUTATE_DIR (default: a folder in /tmp),
# so the working tree never holds a mutant; the copy is kept, for `mutmut show NAME` there.
# Prints mutmut's summary and the surviving mutants of each module; MUTATE_JOBS processes
# (default 2); MUTATE_ONLY (patterns of mutant names) runs some mutants only. Needs the test
# extra installed (./run.sh setup does).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# module -> its fast tests: pytest's arguments, separated by "|"
declare -A tests=(
  [evaluation]="tests/test_evaluation.py"
  [training]="tests/test_training.py|tests/test_checkpoint.py"
  [config]="tests/test_config.py|tests/test_bounded_messages.py"
  [model]="tests/test_model.py"
  [data]="tests/test_data.py|tests/test_disk.py"
  [files]="tests/test_files.py"
  [gemm]="tests/test_gemm.py|tests/test_parallel.py"
  [parallel]="tests/test_parallel.py"
)
order=(evaluation training config model data files gemm parallel)
[ $# -gt 0 ] && order=("$@")
for module in "${order[@]}"; do
  [ -n "${tests[$module]:-}" ] || { echo "mutate: unknown module $module (allowed: ${!tests[*]})" >&2; exit 2; }
done

out=${MUTATE_DIR:-${TMPDIR:-/tmp}/torchreg-mutate}
for module in "${order[@]}"; do
  copy=$out/$module
  rm -rf "$copy" && mkdir -p "$copy"
  # The tracked files as they are now in the working tree (edits included), nothing built.
  git ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$copy")
  # A repo of one commit, as a clone is: some tests ask git what it ignores, DVCLive asks HEAD.
  git -C "$copy" init -q && git -C "$copy" add -A &&
    git -C "$copy" -c user.name=mutate -c user.email=mutate@localhost commit -qm copy
  IFS="|" read -r -a selection <<<"${tests[$module]}"
  # pyproject.toml has no [tool.mutmut]: mutmut reads setup.cfg, one list item a line. The
  # whole package is copied (the tests import it from the copy), one module mutated; -n 0:
  # mutmut runs the tests itself, a mutant a process.
  {
    echo "[mutmut]"
    echo "source_paths = src"
    echo "only_mutate = src/torchreg/$module.py"
    printf 'pytest_add_cli_args =\n    -n\n    0\n    -p\n    no:cacheprovider\n'
    printf 'pytest_add_cli_args_test_selection =\n'
    printf '    %s\n' "${selection[@]}"
    printf 'also_copy =\n'
    printf '    %s\n' stages experiments params.yaml dvc.yaml .gitignore .dvcignore
    echo "process_isolation = forkserver"  # torch is not fork-safe once its threads started
  } >"$copy/setup.cfg"
  start=$SECONDS
  # MUTATE_ONLY: mutmut's name patterns, to run some mutants only (e.g. after a new test):
  # MUTATE_ONLY='torchreg.training.x_check_divergence*' ./run.sh mutate training
  read -r -a only <<<"${MUTATE_ONLY:-}"
  (cd "$copy" && mutmut run --max-children "${MUTATE_JOBS:-2}" "${only[@]}" >mutmut.log 2>&1) ||
    { tail -20 "$copy/mutmut.log" >&2; exit 1; }
  (cd "$copy" && mutmut export-cicd-stats >/dev/null)
  python3 - "$module" $((SECONDS - start)) "$copy" <<'PY'
import json, sys
module, seconds, copy = sys.argv[1:]
s = json.load(open(f"{copy}/mutants/mutmut-cicd-stats.json"))
others = {k: v for k, v in s.items() if k not in ("killed", "survived", "total") and v}
print(f"== {module}: {s['killed']} of {s['total']} mutants killed, {s['survived']} survived",
      f"{others or ''} in {seconds} s ({copy})")
# mutmut counts a run whose tests could not start (pytest's exit 4, as exit 255) as a timeout.
meta = json.load(open(f"{copy}/mutants/src/torchreg/{module}.py.meta"))
broken = sorted(k for k, code in meta["exit_code_by_key"].items() if code == 255)
if broken:
    sys.exit(f"mutate: {len(broken)} mutants of {module} could not run their tests, e.g. "
             f"{broken[0]}: `mutmut run {broken[0]}` in {copy} says why")
PY
  (cd "$copy" && mutmut results)
done
