#!/usr/bin/env python3
"""--device cpu|cuda on score, generate, bench and worker, and on serve and
batch (which forward it to the workers they start on this host, and refuse
an unusable device before starting any):

- `--device foo` is refused by every command before anything runs (exit 2,
  one line naming the value);
- `--device cpu` runs: score's logits match the golden ones (1e-4, as the
  golden tests) and are bitwise those of the default device when the
  default is cpu; generate and bench run;
- `--device cuda` where this build has no CUDA or no GPU is visible exits 1
  with one line saying which ("built without CUDA" / "no CUDA device
  visible"), writes no output, and leaves no process behind; where a GPU is
  usable those checks are skipped (scripts/gpu-check.sh covers the GPU).

usage: test_device.py MOECLUSTER COMPARE_LOGITS FIXTURES WORK_DIR
"""
import os
import subprocess
import sys

failures = 0


def check(cond, what, detail=""):
    global failures
    if cond:
        print(f"ok: {what}")
    else:
        failures += 1
        print(f"FAIL: {what}" + (f"\n   {detail}" if detail else ""))


def run(args, timeout=120):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def main():
    exe, cmp, fixtures, work = sys.argv[1:5]
    os.makedirs(work, exist_ok=True)
    model = os.path.join(fixtures, "models", "qwen3-moe-tiny")
    golden = os.path.join(model, "golden.safetensors")
    out = lambda name: os.path.join(work, name)
    for f in os.listdir(work):
        os.remove(os.path.join(work, f))

    # what this build and machine offer: bench stops right after choosing the device
    rc, _, err = run([exe, "bench", "--device", "cuda", "--model", out("no-such-model")])
    no_cuda = "--device cuda:" in err
    print(f"cuda usable here: {not no_cuda} ({err.strip()[:160]})")

    cmds = {
        "score": ["score", "--model", model, "--input", golden],
        "generate": ["generate", "--model", model, "--prompt-ids", "1,2,3", "-n", "2"],
        "bench": ["bench", "--model", model, "--prompt-len", "8", "--gen-len", "2", "--repeat",
                  "1", "--probe-mib", "16", "--threads", "1"],
        "worker": ["worker", "--model", model, "--listen", "tcp://127.0.0.1:*"],
        "serve": ["serve", "--model", model],
        "batch": ["batch", "--model", model, "--input", out("in.jsonl")],
    }
    with open(out("in.jsonl"), "w") as f:
        f.write('{"custom_id": "a", "method": "POST", "url": "/v1/completions", '
                '"body": {"prompt": "hi", "max_tokens": 2}}\n')
    # the file each command writes, if any
    outs = {"score": ".safetensors", "batch": ".jsonl"}

    # --device foo: a usage error on every command
    for name, args in cmds.items():
        o = out(f"foo-{name}{outs.get(name, '')}")
        extra = ["--output", o] if name in outs else []
        rc, so, err = run([exe] + args + extra + ["--device", "foo"])
        lines = [l for l in err.splitlines() if l.strip()]
        check(rc == 2 and lines and lines[0] == f"moecluster {name}: --device: 'foo' is not cpu "
              "or cuda", f"{name} --device foo: exit 2 naming the value (rc {rc})", err[:200])
        check(not os.path.exists(o), f"{name} --device foo: no output")

    # --device cuda without CUDA or a GPU: one line, exit 1
    if no_cuda:
        for name, args in cmds.items():
            o = out(f"cuda-{name}{outs.get(name, '')}")
            extra = ["--output", o] if name in outs else []
            rc, so, err = run([exe] + args + extra + ["--device", "cuda"], timeout=60)
            lines = [l for l in err.splitlines() if "moecluster" in l]
            said = any(("built without CUDA" in l or "no CUDA device visible" in l) and
                       "--device cuda" in l for l in lines)
            check(rc == 1 and said and len(lines) == 1,
                  f"{name} --device cuda here: exit 1 with one line saying why (rc {rc})",
                  err[-300:])
            check(not os.path.exists(o), f"{name} --device cuda here: no output written")
            check("Traceback" not in err and "Assertion" not in err, f"{name}: no crash")
    else:
        print("skip: a GPU is usable here: the --device cuda refusals are not checked")

    # --device cpu: the golden logits; bitwise the default's when the default is cpu
    rc, _, err = run([exe] + cmds["score"] + ["--output", out("cpu.safetensors"), "--device", "cpu"])
    check(rc == 0, f"score --device cpu (rc {rc})", err[-300:])
    if rc == 0:
        rc, so, err = run([cmp, out("cpu.safetensors"), golden, "1e-4", "0.99"])
        check(rc == 0, "score --device cpu: the golden logits (1e-4)", (so + err)[-400:])
    if no_cuda:
        rc, _, err = run([exe] + cmds["score"] + ["--output", out("default.safetensors")])
        check(rc == 0, f"score with the default device (rc {rc})", err[-300:])
        if rc == 0 and os.path.exists(out("cpu.safetensors")):
            same = open(out("cpu.safetensors"), "rb").read() == \
                open(out("default.safetensors"), "rb").read()
            check(same, "score: the default device is cpu here: the same bytes as --device cpu")
    rc, so, err = run([exe] + cmds["generate"] + ["--device", "cpu"])
    check(rc == 0 and so.strip().count(",") == 1, f"generate --device cpu -n 2 (rc {rc})",
          (so + err)[-300:])
    rc, so, err = run([exe] + cmds["bench"] + ["--device", "cpu"])
    check(rc == 0 and "decode" in so, f"bench --device cpu (rc {rc})", (so + err)[-300:])
    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
