#!/usr/bin/env python3
"""Usage texts agree with the code and the README, for every command:

- the flags in `moecluster CMD --help` are exactly the long options of the
  command's getopt table in the source (and its short options), and whether
  a flag takes a value in the synopsis is what the table says;
- every documented flag is accepted by the binary (no "unrecognized option"),
  a value flag without its value is refused, a switch given a value is
  refused;
- every flag described in the option lines is in the synopsis (or is an alias
  on the same line as one that is);
- every choice a synopsis lists for a value (`a|b|c`) is accepted;
- the README's synopsis blocks (```sh blocks under "## Commands") list the
  same flags, with the same values, as the --help synopsis.

usage: test_usage.py MOECLUSTER SOURCE_DIR WORK_DIR
"""
import os
import re
import subprocess
import sys

failures = 0
FLAG = re.compile(r"(?<![\w-])(--?[a-z][a-z0-9-]*)")
# a flag and its placeholder; in "--model DIR|--shards DIR" the "|--" starts another flag
SYN = re.compile(r"(?<![\w-])(--?[a-z][a-z0-9-]*)(?:[ =]([^\s\[\]|-](?:[^\s\[\]|]|\|(?!-))*))?")
UNKNOWN = ("unrecognized option", "unknown option", "invalid option")
# Commands that would start serving when their flags are all valid: the flag
# checks add these arguments so that they stop at once after parsing.
QUICK_FAIL = {"serve": ["--model", "no-such-model-folder"]}


def check(cond, what, detail=""):
    global failures
    if cond:
        print(f"ok: {what}")
    else:
        failures += 1
        print(f"FAIL: {what}" + (f"\n   {detail}" if detail else ""))


def run(args, cwd):
    p = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def commands(exe, cwd):
    rc, out, _ = run([exe, "--help"], cwd)
    check(rc == 0, f"moecluster --help exits 0 (rc {rc})")
    names, on = [], False
    for line in out.splitlines():
        if line.startswith("commands:"):
            on = True
        elif on and re.match(r"^  [a-z][a-z-]* ", line):
            names.append(line.split()[0])
    return names


def synopsis_flags(text):
    """{flag: its value's placeholder, or None for a switch}, first occurrence wins."""
    found = {}
    for m in SYN.finditer(text):
        found.setdefault(m.group(1), m.group(2))
    return found


def parse_help(text):
    """(synopsis flags {flag: placeholder or None}, option lines as lists of flags)."""
    synopsis, _, rest = text.partition("\n\n")
    syn = synopsis_flags(synopsis)
    lines = []
    for line in rest.splitlines():
        if re.match(r"^\s+-", line):
            head = re.split(r"\s{2,}", line.strip())[0]  # the flags before the description
            lines.append(FLAG.findall(head))
    return syn, lines


def source_tables(src):
    """{command: {flag: takes_value}} from the getopt tables in coordinator/."""
    par = open(os.path.join(src, "coordinator", "par_args.h")).read()
    m = re.search(r"#define MC_PAR_OPTIONS(.*?)\n\n", par, re.S)
    par_opts = re.findall(r'\{"([a-z0-9-]+)",\s*(\w+)_argument', m.group(1)) if m else []
    m = re.search(r"#define MC_DEVICE_OPTIONS(.*?)\n", par)
    dev_opts = re.findall(r'\{"([a-z0-9-]+)",\s*(\w+)_argument', m.group(1)) if m else []
    tables = {}
    cdir = os.path.join(src, "coordinator")
    for fn in sorted(os.listdir(cdir)):
        if not fn.endswith(".c"):
            continue
        text = open(os.path.join(cdir, fn)).read()
        starts = [(m.start(), m.group(1)) for m in re.finditer(r"\nint mc_cmd_(\w+)\(", text)]
        for i, (a, name) in enumerate(starts):
            body = text[a:starts[i + 1][0] if i + 1 < len(starts) else len(text)]
            t = re.search(r"struct option opts\[\] = \{(.*?)\{0, 0, 0, 0\}", body, re.S)
            if not t:
                continue
            opts = re.findall(r'\{"([a-z0-9-]+)",\s*(\w+)_argument', t.group(1))
            if "MC_PAR_OPTIONS" in t.group(1):
                opts += par_opts
            if "MC_DEVICE_OPTIONS" in t.group(1):
                opts += dev_opts
            table = {"--" + n: kind == "required" for n, kind in opts}
            short = re.search(r'getopt_long\(argc, argv, "([^"]*)"', body)
            for c, colon in re.findall(r"([a-zA-Z])(:?)", short.group(1) if short else ""):
                table["-" + c] = bool(colon)
            tables[name.replace("_", "-")] = table
    return tables


def readme_synopses(src):
    """{command: {flag: placeholder}} from the ```sh blocks of README's "## Commands"."""
    text = open(os.path.join(src, "README.md")).read()
    sec = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    found = {}
    for block in re.findall(r"```sh\n(.*?)```", sec, re.S):
        logical = []
        for line in block.splitlines():
            if logical and (logical[-1].endswith("\\") or line[:1].isspace()):
                logical[-1] = logical[-1].rstrip("\\") + " " + line.strip()
            else:
                logical.append(line)
        for line in logical:
            m = re.match(r"moecluster ([a-z][a-z-]*)(.*)", line)
            if m:
                flags = synopsis_flags(m.group(2).split("#")[0])
                have = found.setdefault(m.group(1), {})
                for f, v in flags.items():
                    have.setdefault(f, v)
    return found


def main():
    exe, src, work = os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3]
    os.makedirs(work, exist_ok=True)
    cmds = [c for c in commands(exe, work) if c != "version"]
    check(len(cmds) >= 7, f"commands listed by --help: {cmds}")
    check("tokenize" in cmds, "tokenize is listed by --help")
    check("worker" in cmds, "worker is listed by --help")
    tables = source_tables(src)
    readme = readme_synopses(src)
    for cmd in cmds:
        rc, text, err = run([exe, cmd, "--help"], work)
        check(rc == 0 and text.startswith(f"usage: moecluster {cmd} "),
              f"{cmd} --help: exit 0 and a usage line on stdout", err.strip()[:200])
        syn, opt_lines = parse_help(text)
        documented = set(syn) | {f for line in opt_lines for f in line}
        documented -= {"--help", "-h"}
        table = {f: v for f, v in tables.get(cmd, {}).items() if f not in ("--help", "-h")}
        check(bool(table), f"{cmd}: getopt table found in the source")
        missing = sorted(set(table) - documented)
        check(not missing, f"{cmd}: every option of the getopt table is in --help",
              f"missing from --help: {missing}")
        extra = sorted(documented - set(table))
        check(not extra, f"{cmd}: every flag in --help is in the getopt table",
              f"not in the table: {extra}")
        wrong = sorted(f for f, v in syn.items() if f in table and table[f] != (v is not None))
        check(not wrong, f"{cmd}: the synopsis shows a value exactly for value options",
              f"synopsis and table disagree on: {wrong}")
        for line in opt_lines:
            check(any(f in syn for f in line) or set(line) <= {"--help", "-h"},
                  f"{cmd}: option line {line} is in the synopsis")
        if opt_lines:
            described = {f for line in opt_lines for f in line}
            undesc = sorted(set(syn) - described)
            check(not undesc, f"{cmd}: every synopsis flag has an option line",
                  f"not described: {undesc}")
        for flag in sorted(documented):
            rc, _, err = run([exe, cmd, flag, "1"] + QUICK_FAIL.get(cmd, []), work)
            bad = [u for u in UNKNOWN if u in err]
            check(rc < 128 and not bad, f"{cmd} {flag}: accepted (rc {rc})", err.strip()[:200])
            if table.get(flag):
                rc, _, err = run([exe, cmd, flag], work)
                check(rc == 2 and "requires an argument" in err,
                      f"{cmd} {flag} without a value is refused (rc {rc})", err.strip()[:200])
            elif flag.startswith("--") and flag in table:
                rc, _, err = run([exe, cmd, flag + "=1"], work)
                check(rc == 2 and "allow an argument" in err,
                      f"{cmd} {flag}=1 is refused (rc {rc})", err.strip()[:200])
        rc, _, err = run([exe, cmd, "--no-such-flag"], work)
        check(rc == 2 and "unrecognized option" in err and f"usage: moecluster {cmd}" in err,
              f"{cmd} --no-such-flag: exit 2 with the usage", err.strip()[:200])
        for flag, value in sorted(syn.items()):  # every listed choice is accepted
            for choice in (value.split("|") if value and "|" in value else []):
                if re.fullmatch(r"[a-z0-9_]+", choice):  # a literal value, not a placeholder
                    rc, _, err = run([exe, cmd, flag, choice] + QUICK_FAIL.get(cmd, []), work)
                    check(f"'{choice}' is not" not in err and not any(u in err for u in UNKNOWN),
                          f"{cmd} {flag} {choice}: a listed choice is accepted", err.strip()[:200])
        if cmd in readme:
            r, h = set(readme[cmd]), set(syn) - {"--help", "-h"}
            check(r == h, f"{cmd}: README synopsis lists the --help synopsis flags",
                  f"only in README: {sorted(r - h)}; only in --help: {sorted(h - r)}")
            diff = sorted(f"{f}: README {readme[cmd][f]} vs --help {syn[f]}"
                          for f in r & h if readme[cmd][f] != syn[f])
            check(not diff, f"{cmd}: README and --help show the same values", "; ".join(diff))
        else:
            check(False, f"{cmd}: README has a synopsis under '## Commands'")
    for cmd in sorted(set(readme) - set(cmds)):
        check(False, f"README synopsis of '{cmd}' names a command of the binary")
    rc, out, _ = run([exe, "version"], work)
    check(rc == 0 and out.startswith("moecluster "), "version prints the version")
    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
