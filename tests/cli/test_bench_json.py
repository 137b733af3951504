#!/usr/bin/env python3
"""`bench --json` is one valid JSON object whatever the model path holds.

- a checkpoint folder whose path holds a quote and a backslash: valid JSON,
  `model` equal to the path byte for byte, every field that scripts read
  present with its type, `gguf` null;
- `--batch 1,4,2`: a `decode` entry per batch size in that order (batch,
  tok/s, bytes per step and per token, GB/s), the top-level decode fields
  those of the first; more tokens a step read at least the weights of one;
  one batch size gives one entry; a malformed list is refused (exit 2);
- a folder whose name is not UTF-8: a clear error (exit 1), not a crash
  and not half an object on stdout;
- a GGUF file (tests/fixtures/gguf/st_to_gguf.py from qwen3-moe-tiny,
  Q8_0 matrices) copied with the `gguf` package's reader and writer into a
  file whose name holds a quote and a backslash, with general.file_type 7
  (Q8_0) and a general.name holding a quote, a backslash and a non-ASCII
  letter: `gguf.file`, `file_type`, `file_type_name`, `name` as written, and
  `tensor_types` equal to the count the package's reader makes.

Exits 77 (skipped) when the `gguf` package is missing and everything else
passed.

usage: test_bench_json.py MOECLUSTER FIXTURES WORK_DIR
"""
import json
import os
import shutil
import subprocess
import sys
from collections import Counter

failures = 0

# the fields of `bench --json` and their JSON types (scripts and docs read them)
FIELDS = {
    "model": str, "model_type": str, "layers": int, "weights": str, "kernels": str,
    "threads": int, "batch": int, "prompt_len": int, "gen_len": int,
    "prefill_tok_s": float, "prefill_gflops": float, "fma_peak_gflops": float,
    "prefill_fma_ratio": float, "decode_tok_s": float, "bytes_per_step": int,
    "bytes_per_token": int, "achieved_gbps": float, "probe_gbps": float,
    "probe_gbps_before": float, "probe_gbps_after": float, "bandwidth_ratio": float,
    "probe_gbps_paired": float, "bandwidth_ratio_paired": float,
    "load_s": float, "repeat": int, "anon_huge_mib": int, "cpu": str, "cpu_features": str,
    "activations": str, "kv_cache_dtype": str,
}


def check(cond, what, detail=""):
    global failures
    if cond:
        print(f"ok: {what}")
    else:
        failures += 1
        print(f"FAIL: {what}" + (f"\n   {detail}" if detail else ""))


def bench(exe, model, extra=()):
    args = [exe, "bench", "--model", model, "--prompt-len", "4", "--gen-len", "1",
            "--repeat", "1", "--probe-mib", "1", "--threads", "1", "--json"] + list(extra)
    p = subprocess.run(args, capture_output=True, timeout=300)
    return p.returncode, p.stdout, p.stderr.decode(errors="replace")


def parse(rc, out, err, what):
    """The one JSON object on stdout, or None (a failure is counted)."""
    try:
        j = json.loads(out.decode("utf-8"))
    except ValueError as e:
        check(False, f"{what}: valid JSON", f"rc {rc}: {e}; stdout {out[:300]!r}; stderr {err[:300]}")
        return None
    check(rc == 0 and isinstance(j, dict), f"{what}: exit 0 and one JSON object (rc {rc})", err[:300])
    return j if isinstance(j, dict) else None


def fields(j, what):
    bad = []
    for k, t in FIELDS.items():
        v = j.get(k)
        if t is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        else:
            ok = isinstance(v, t) and not isinstance(v, bool)
        if not ok:
            bad.append(f"{k}={v!r}")
    check(not bad, f"{what}: every field with its type", ", ".join(bad[:5]))
    check(j.get("decode_tok_s", 0) > 0 and j.get("bytes_per_step", 0) > 0,
          f"{what}: a decode speed and bytes per step")
    def peak(key, ratio_key, expected):
        """a peak and its prefill ratio: numbers where expected, else both null"""
        pk, ratio = j.get(key, "absent"), j.get(ratio_key, "absent")
        if expected:
            ok = isinstance(pk, (int, float)) and pk > 0 and isinstance(ratio, (int, float))
        else:
            ok = pk is None and ratio is None
        check(ok, f"{what}: {key} / {ratio_key} {'numbers' if expected else 'null'}",
              f"kernels {j.get('kernels')!r}: {pk!r}, {ratio!r}")

    # the INT8 peak: a number on the amx (tiles) and avx512 (vpdpbusd) paths,
    # with its prefill ratio, null on the others
    simd = j.get("kernels") in ("amx", "avx512")
    peak("int8_peak_gops", "prefill_int8_ratio", simd)
    # the BF16 peak: amx's tiles with AMX-BF16, else vdpbf16ps on avx512 / amx
    # with AVX512-BF16 (cpu_features), null otherwise
    feats = j.get("cpu_features", "").split()
    peak("bf16_peak_gflops", "prefill_bf16_ratio",
         simd and ("avx512bf16" in feats or "amx_bf16" in feats))
    check(j.get("activations") in ("f32", "bf16"), f"{what}: activations f32 or bf16",
          repr(j.get("activations")))
    check(j.get("kv_cache_dtype") == "f32", f"{what}: kv_cache_dtype f32 (the default)",
          repr(j.get("kv_cache_dtype")))


def main():
    exe, fx, work = sys.argv[1:4]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    src = os.path.join(fx, "models", "qwen3-moe-tiny")

    # a folder with a quote and a backslash in its path
    weird = os.path.join(work, 'we"ird\\mo del')
    shutil.copytree(src, weird)
    rc, out, err = bench(exe, weird)
    j = parse(rc, out, err, "safetensors folder with a quote and a backslash")
    if j is not None:
        check(j.get("model") == weird, "model is the path as given",
              f"{j.get('model')!r} != {weird!r}")
        check("gguf" in j and j["gguf"] is None, "gguf is null for a safetensors folder",
              repr(j.get("gguf")))
        fields(j, "safetensors folder")
        dec = j.get("decode")
        check(isinstance(dec, list) and len(dec) == 1 and dec[0].get("batch") == 1,
              "one batch size: one decode entry", repr(dec))

    # several batch sizes in one run
    rc, out, err = bench(exe, src, ["--batch", "1,4,2"])
    j = parse(rc, out, err, "--batch 1,4,2")
    if j is not None:
        dec = j.get("decode") or []
        check([d.get("batch") for d in dec] == [1, 4, 2], "a decode entry per batch, in order",
              repr(dec))
        ok = all(d.get("decode_tok_s", 0) > 0 and d.get("bytes_per_step", 0) > 0 and
                 d.get("achieved_gbps", 0) > 0 and
                 abs(d["bytes_per_token"] - d["bytes_per_step"] / d["batch"]) <= 1 for d in dec)
        check(ok, "each entry: tok/s, bytes per step and per token, GB/s", repr(dec))
        if len(dec) == 3:
            check(j.get("batch") == 1 and j.get("decode_tok_s") == dec[0]["decode_tok_s"] and
                  j.get("bytes_per_step") == dec[0]["bytes_per_step"],
                  "the top-level decode fields are the first entry's", repr(j))
            check(dec[1]["bytes_per_step"] >= dec[0]["bytes_per_step"],
                  "a step of 4 tokens reads at least the weights of a step of 1", repr(dec))
    p = subprocess.run([exe, "bench", "--model", src, "--batch", "1,,2"], capture_output=True,
                       text=True, timeout=60)
    check(p.returncode == 2 and "--batch: '1,,2' is not a comma list" in p.stderr,
          f"--batch 1,,2 refused (exit {p.returncode})", p.stderr[:300])

    # a folder name that is not UTF-8: refused with a message, nothing on stdout
    bad = os.path.join(os.fsencode(work), b"bad\xffname")
    shutil.copytree(os.fsencode(src), bad)
    rc, out, err = bench(os.fsencode(exe), bad)
    check(rc == 1 and out == b"" and "not UTF-8" in err,
          f"a path that is not UTF-8: exit 1 with a message, no output (rc {rc})",
          f"stdout {out[:200]!r}; stderr {err[:200]}")

    try:
        import gguf
    except ImportError as e:
        print(f"skipped: the GGUF case: {e} (scripts/setup.sh installs the gguf package)")
        return 1 if failures else 77

    plain = os.path.join(work, "plain.gguf")
    tool = os.path.join(fx, "gguf", "st_to_gguf.py")
    p = subprocess.run([sys.executable, tool, src, plain, "--type", "q8_0"], capture_output=True,
                       text=True, timeout=300)
    if p.returncode != 0:
        check(False, "st_to_gguf.py wrote the GGUF", p.stderr[-500:])
        return 1
    # copy it with a file type and a name (st_to_gguf.py writes neither)
    r = gguf.GGUFReader(plain)
    name = 'tiny "q\\8" modèle'
    fname = 'q"8\\0.gguf'
    path = os.path.join(work, fname)
    w = gguf.GGUFWriter(path, r.fields["general.architecture"].contents())
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vt = f.types[0]
        w.add_key_value(f.name, f.contents(), vt,
                        sub_type=f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None)
    w.add_uint32("general.file_type", 7)
    w.add_name(name)
    for t in r.tensors:
        w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in r.tensors:
        w.write_tensor_data(t.data)
    w.close()
    want_types = dict(Counter(t.tensor_type.name for t in r.tensors))

    rc, out, err = bench(exe, path)
    j = parse(rc, out, err, "GGUF file with a quote and a backslash in its name")
    if j is None:
        return 1
    check(j.get("model") == path, "model is the path as given", repr(j.get("model")))
    fields(j, "GGUF file")
    g = j.get("gguf")
    if not isinstance(g, dict):
        check(False, "gguf is an object for a GGUF file", repr(g))
        return 1
    check(g.get("file") == fname, "gguf.file is the file's name", f"{g.get('file')!r} != {fname!r}")
    check(g.get("parts") == 1, "gguf.parts is 1", repr(g.get("parts")))
    check(g.get("file_type") == 7 and g.get("file_type_name") == "Q8_0",
          "gguf.file_type 7 is Q8_0", f"{g.get('file_type')!r} {g.get('file_type_name')!r}")
    check(g.get("name") == name, "gguf.name as written", f"{g.get('name')!r} != {name!r}")
    check(g.get("tensor_types") == want_types, "gguf.tensor_types as the gguf package counts",
          f"{g.get('tensor_types')!r} != {want_types!r}")

    # the plain file: no file type, no name
    rc, out, err = bench(exe, plain)
    j = parse(rc, out, err, "GGUF file without general.file_type or general.name")
    if j is not None:
        g = j.get("gguf") or {}
        check(g.get("file") == "plain.gguf" and g.get("file_type") is None and
              g.get("file_type_name") is None and g.get("name") is None,
              "absent keys are null", repr(g))

    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
