#!/usr/bin/env bash
# The package installs like a library: build a wheel, install it (not editable) into a fresh venv with the pinned
# versions, and run the documented commands from a folder outside the checkout. .ci/run runs it beside the tests.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3.11}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"  # the files git tracks, as they are in the working tree: the build writes nothing into the checkout
git -C "$root" ls-files -z | (cd "$root" && tar --null -T - -cf -) | tar -xf - -C "$work/src"
"$python" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$work/dist" "$work/src"
wheel=("$work"/dist/pvera_bench-*.whl)
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$root/requirements/constraints.txt" \
    "${wheel[0]}"
bench="$work/venv/bin/pvera-bench"
cd "$work"  # outside the checkout: nothing may come from it
"$bench" --help >/dev/null
"$work/venv/bin/python" -c "import pvera_bench, sys; assert '$root' not in pvera_bench.__file__, pvera_bench.__file__"
"$bench" run experiment=demo adapter=lora trainer.epochs=1 trainer.progress=false \
    paths.results="$work/runs" data.root="$work/data" hydra.run.dir="$work/outputs"
"$bench" table --runs "$work/runs" --out "$work/tables"
test -s "$work/tables/vtab1k.md" && test -s "$work/tables/vtab1k.tex"
echo "wheel check passed: $(basename "${wheel[0]}") installed in a fresh venv ran --help, a demo run and table"
