#!/usr/bin/env bash
# First contact with an Ascend NPU: runs tests/npu (the stack probe, every op npu-serve calls against the
# torch reference, the engine on npu:0 against the CPU, a startup refusal) and prints ONE table to send
# back. Uses the python, torch, torch_npu and transformers already installed (CANN sourced) and installs
# nothing; the repo goes on PYTHONPATH.
#
#   source /usr/local/Ascend/ascend-toolkit/set_env.sh; source /usr/local/Ascend/nnal/atb/set_env.sh
#   scripts/npu_check.sh                          # PYTHON=python3 by default, the first visible NPU
#   PYTHON=/opt/venv/bin/python ASCEND_RT_VISIBLE_DEVICES=3 scripts/npu_check.sh
#   NPU_SERVE_NPU_DECODE_OP=atb scripts/npu_check.sh   # the same with ATB paged-attention decodes
# Without network the default model cannot be fetched: its engine test then skips (set
# NPU_SERVE_TEST_SKIP_DEFAULT_MODEL=1 to skip it on purpose), the op tests still run.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
OUT="$(mktemp -d "${TMPDIR:-/tmp}/npu_check.XXXXXX")"
export PYTHONPATH="$REPO:$REPO/kernels${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO" || exit 2

"$PYTHON" -m pytest tests/npu -v -rA -s -p no:cacheprovider -o junit_logging=system-out \
    --junitxml="$OUT/npu.xml" >"$OUT/pytest.log" 2>&1
rc=$?
tail -n 5 "$OUT/pytest.log"

"$PYTHON" - "$OUT/npu.xml" "$OUT/pytest.log" <<'PY'
import json, re, sys, time
import xml.etree.ElementTree as ET

xml_path, log_path = sys.argv[1:3]
try:
    cases = ET.parse(xml_path).getroot().iter("testcase")
except (OSError, ET.ParseError) as e:
    print(f"no results ({e}); see {log_path}")
    sys.exit(0)
log = open(log_path, errors="replace").read()
stack = re.search(r"^STACK (\{.*\})$", log, re.M)
print(f"\n## npu_check ({time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())})\n")
if stack:
    facts = json.loads(stack.group(1))
    print("stack: " + "; ".join(f"{k} {v}" for k, v in facts.items()) + "\n")
print("| test | result | seconds | detail |")
print("|------|--------|---------|--------|")
notes = {"ITEM10": "", "FIA band": ""}
for case in cases:
    name = case.get("name")
    result, detail = "PASS", ""
    for tag, label in (("failure", "FAIL"), ("error", "ERROR"), ("skipped", "SKIP")):
        found = case.find(tag)
        if found is not None:
            result = label
            detail = (found.get("message") or found.text or "").strip().splitlines()[0][:160]
    out = case.findtext("system-out") or ""
    for key in notes:
        m = re.search(rf"^{key}.*$", out, re.M)
        if m:
            detail = (detail + " " + m.group(0)).strip()
    print(f"| {name} | {result} | {float(case.get('time', 0)):.1f} | {detail.replace('|', '/')} |")
PY
echo
echo "full log: $OUT/pytest.log"
exit $rc
