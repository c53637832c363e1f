#!/usr/bin/env python3
"""The bad-input matrix of the tileattn command (issue 14): zero, negative, huge and wrapping values, malformed and
hostile files (wrapping safetensors shapes, deep JSON, 1e400, /dev/zero), bad paths and a full disk (/dev/full).

Every case must exit with status 2 (bad input; never 3 = internal error, never a signal, never 0), print an error
naming the flag, file or key, keep that message short (no dump of the input), and leave no output behind (no target
file, no temporary). Each case runs in a fresh directory under a memory limit (unless --no-memory-limit, for the
sanitizer build whose shadow memory needs a large address space) and a time limit.

usage: check_bad_inputs.py TILEATTN_CLI [--no-memory-limit] [--list] [-k SUBSTRING]
"""
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile

MEMORY_LIMIT = 2 << 30  # bytes of address space per case: the 8-12 GB allocations of old must fail fast
TIMEOUT = int(os.environ.get("BAD_INPUT_TIMEOUT", "60"))  # seconds per case
MAX_MESSAGE = 1500  # characters of stderr: a message quotes at most a bounded excerpt of the input

SMALL = ["--video", "2x4x4", "--tile", "2x4x4", "--text-len", "4", "--heads", "2", "--head-dim", "8"]


def small(flag, value):
    """SMALL with `flag` set to `value` (CLI11 refuses a repeated option)."""
    out = list(SMALL)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return out


# ---- file makers (each writes into the case's directory and returns the path) ----

def safetensors(path, header, data=b"", raw_header=None):
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
    return path


META = {"video_shape": "1x1x1", "text_len": "0", "step": "0", "layer": "0", "prompt": "p"}


def capture_header(shape, dtype="F32", begin=0, per_tensor=None, meta=None, names=("q", "k", "v")):
    """q, k, v of `shape`, each spanning `per_tensor` bytes (default: what the shape needs, may be wrapped)."""
    header = {"__metadata__": meta if meta is not None else dict(META)}
    size = per_tensor
    if size is None:
        size = 4 if dtype == "F32" else 2
        for d in shape:
            size *= d
    for i, n in enumerate(names):
        header[n] = {"dtype": dtype, "shape": shape, "data_offsets": [begin + i * size, begin + (i + 1) * size]}
    return header, 3 * size


def capture_dir(d, name, header, data_bytes, raw_header=None):
    caps = os.path.join(d, name)
    os.makedirs(caps, exist_ok=True)
    safetensors(os.path.join(caps, "c.safetensors"), header, b"\0" * data_bytes, raw_header)
    return caps


def wrapped_capture(d):
    # 2^62 * 4 * 1 * 1 * 4 bytes wraps to 0 mod 2^64; then [2^62 + 1] makes 16 bytes: the product "fits" the file.
    shape = [2 ** 62 + 1, 1, 1, 1]
    header, data = capture_header(shape, per_tensor=4)  # 4 bytes each: (2^62 + 1) * 4 mod 2^64 = 4
    return capture_dir(d, "wrapped", header, data)


def deep_json(depth, leaf="1"):
    return "[" * depth + leaf + "]" * depth


def write(d, name, text, mode="w"):
    path = os.path.join(d, name)
    with open(path, mode) as f:
        f.write(text)
    return path


def synth_captures(cli, d):
    out = os.path.join(d, "good")
    r = subprocess.run([cli, "synth", out, *SMALL, "--layers", "1", "--steps", "1", "--prompts", "1"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    return out


def calibrate(captures, output, *extra):
    """calibrate with its defaults here, `extra` flag/value pairs replacing them."""
    opts = {"--tile": "2x4x4", "--candidates": "1x1x1", "--device": "cpu", "--rule": "argmin", "-o": output}
    rest = []
    for i in range(0, len(extra), 2):
        if extra[i] in opts:
            opts[extra[i]] = extra[i + 1]
        else:
            rest += extra[i:i + 2]
    return ["calibrate", captures, "--quiet", *[x for kv in opts.items() for x in kv], *rest]


# ---- the matrix: (name, args or f(dir) -> args, needle in stderr, outputs that must not exist) ----

CASES = []


def case(name, args, needle, outputs=()):
    CASES.append((name, args, needle, outputs))


HUGE = ["9223372036854775807", "9223372036854775808", "18446744073709551616", "4294967296", "2147483648"]
NEG = ["-1", "-3", "-9223372036854775808"]

# plan: numbers
for v in NEG + HUGE:
    case(f"plan --heads {v}", ["plan", "--heads", v], "--heads")
    case(f"plan --text {v}", ["plan", "--text", v], "--text")
for v in NEG:
    case(f"plan --step {v}", ["plan", "--window", "3x3x3", "--step", v], "--step")
    case(f"plan --layer {v}", ["plan", "--window", "3x3x3", "--layer", v], "--layer")
    case(f"plan --svg-head {v}", ["plan", "--svg-head", v], "--svg-head")
case("plan --text 2000000000", ["plan", "--text", "2000000000"], "--")
case("plan --text 2147483647", ["plan", "--shape", "1x1x1", "--tile", "1x1x1", "--window", "1x1x1",
                                "--text", "2147483647"], "--")
case("plan --text 2147483648 (past the token limit)", ["plan", "--text", "2147483648"], "--text")
# plan: shapes that wrap or exceed the token limit
for shape in ["4294967296x4294967296x1", "2147483648x1x1", "2097152x2097152x2097152", "65536x65536x65536",
              "3037000500x3037000500x1", "9223372036854775807x1x1", "9223372036854775808x1x1", "1x1x-1",
              "0x1x1", "1x1", "1x1x1x1", "axbxc", "", "x", "1xx1"]:
    case(f"plan --shape {shape!r}", ["plan", "--shape", shape], "--shape")
for tile in ["0x8x8", "-1x8x8", "1x1", "8x8x8x8", "9223372036854775808x1x1"]:
    case(f"plan --tile {tile!r}", ["plan", "--tile", tile], "--tile")
case("plan: 1x1x1 tiles of a large video (tile count limit)",
     ["plan", "--shape", "1024x1024x512", "--tile", "1x1x1", "--window", "1x1x1"], "--tile")
for w in ["0x3x3", "-1x3x3", "9223372036854775807x3x3", "3x3", "", "3x3x3,", ",", "4x3x3"]:
    case(f"plan --window {w!r}", ["plan", "--window", w], "--window")
case("plan --heads 70000 (past limits::kMaxHeads)", ["plan", "--window", "3x3x3", "--heads", "70000"], "--heads")
case("plan: dense windows on a long video (plan size limit)",
     ["plan", "--shape", "512x512x512", "--tile", "8x8x8", "--window", "63x63x63", "--heads", "64"], "--")
# plan: outputs
case("plan --json /dev/full", ["plan", "--json", "/dev/full"], "/dev/full")
case("plan --svg /dev/full", ["plan", "--svg", "/dev/full"], "/dev/full")
case("plan --json into a missing directory", ["plan", "--json", "missing/dir/plan.json"], "--json")
case("plan --json is a directory", lambda d: ["plan", "--json", d], "--json")
case("plan --json ok, --svg /dev/full", ["plan", "--json", "plan.json", "--svg", "/dev/full"], "/dev/full")
# plan --strategy: hostile files
STRATEGY = ["plan", "--heads", "2", "--strategy"]
case("strategy /dev/zero", STRATEGY + ["/dev/zero"], "/dev/zero")
case("strategy: a directory", lambda d: STRATEGY + [d], "mask strategy")
case("strategy: missing file", STRATEGY + ["missing.json"], "missing.json")
case("strategy: empty file", lambda d: STRATEGY + [write(d, "s.json", "")], "s.json")
case("strategy: deep arrays", lambda d: STRATEGY + [write(d, "s.json", deep_json(110000))], "s.json")
case("strategy: deep objects", lambda d: STRATEGY + [write(d, "s.json", '{"a":' * 60000 + "1" + "}" * 60000)],
     "s.json")
case("strategy: deep value of a key",
     lambda d: STRATEGY + [write(d, "s.json", '{"0_0_0": ' + deep_json(100000) + "}")], "s.json")
case("strategy: deep but unclosed", lambda d: STRATEGY + [write(d, "s.json", "[" * 200000)], "s.json")
for text, key in [('{"0_0_0": [1e400, 3, 3]}', "s.json"), ('{"0_0_0": [3, 3, -1e400]}', "s.json"),
                  ('{"0_0_0": [NaN, 3, 3]}', "s.json"), ('{"0_0_0": [Infinity, 3, 3]}', "s.json"),
                  ('{"0_0_0": [3.5, 3, 3]}', "0_0_0"), ('{"0_0_0": [3, 3, 18446744073709551615]}', "0_0_0"),
                  ('{"0_0_0": [3, 3, 9223372036854775808]}', "0_0_0"), ('{"0_0_0": [3, 3, 99999999999999999999]}', "s.json"),
                  ('{"0_0_0": [3, 3, 3], "0_0_0": [3, 3, 3]}', "0_0_0"), ('{"-1_0_0": [3, 3, 3]}', "-1_0_0"),
                  ('{"99999999999999999999_0_0": [3, 3, 3]}', "99999999999999999999_0_0"),
                  ('{"0_0_0": [4, 3, 3]}', "--"),
                  ('{"format": "tileattn.mask_strategy", "version": 1, "dense_steps": 1e400}', "s.json"),
                  ('{"format": "tileattn.mask_strategy", "version": 1, "dense_steps": 2.5}', "dense_steps"),
                  ('{"format": "tileattn.mask_strategy", "version": 1, "dense_steps": -1}', "dense_steps"),
                  ('{"format": "tileattn.mask_strategy", "version": 1.5}', "version"),
                  ('{"format": "tileattn.mask_strategy", "version": 1, "video_shape": [4294967296, 4294967296, 1],'
                   ' "tile": [1, 1, 1]}', "video_shape"),
                  ('{"format": "tileattn.mask_strategy", "version": 1, "video_shape": [30, 48, 80],'
                   ' "tile": [6, 8, 8], "text_len": 1e300}', "text_len"),
                  ('{"format": ' + deep_json(50) + "}", "format"),
                  ('{"format": "' + "x" * 1000000 + '"}', "format"),
                  ('{"' + "k" * 1000000 + '": [3, 3, 3]}', "s.json"),
                  ("[1, 2, 3]", "s.json"), ("nul", "s.json"), ('{"0_0_0": [3, 3, 3]', "s.json"),
                  ("\xff\xfe{}", "s.json")]:
    case(f"strategy {text[:60]!r}", (lambda t: lambda d: STRATEGY + [write(d, "s.json", t)])(text), key)

# synth: numbers and outputs
for flag in ["--heads", "--layers", "--steps", "--prompts", "--batch", "--head-dim"]:
    for v in ["0"] + NEG + HUGE:
        case(f"synth {flag} {v}", ["synth", "out", *small(flag, v)], flag, ["out"])
for v in NEG + ["2147483648"]:
    case(f"synth --text-len {v}", ["synth", "out", *small("--text-len", v)], "--text-len", ["out"])
case("synth --text-len 2000000000", ["synth", "out", *small("--text-len", "2000000000")], "--", ["out"])
case("synth --batch 72057594037927937 (wraps the byte count)",
     ["synth", "out", *small("--batch", "72057594037927937")], "--batch", ["out"])
case("synth --batch 100000000 (past limits::kMaxSynthTensorBytes)", ["synth", "out", *small("--batch", "100000000")],
     "--batch", ["out"])
case("synth --video wrapping", ["synth", "out", *small("--video", "4294967296x4294967296x1")], "--video", ["out"])
case("synth --tile 0x1x1", ["synth", "out", *small("--tile", "0x1x1")], "--tile", ["out"])
case("synth --sharpness nan", ["synth", "out", *small("--sharpness", "nan")], "--sharpness", ["out"])
case("synth --sharpness inf", ["synth", "out", *small("--sharpness", "inf")], "--sharpness", ["out"])
case("synth --threads -1", ["synth", "out", *small("--threads", "-1")], "--threads", ["out"])
case("synth --dtype fp8", ["synth", "out", *small("--dtype", "fp8")], "--dtype", ["out"])
case("synth into /dev/full", ["synth", "/dev/full", *SMALL], "/dev/full")
case("synth into a file's subdirectory", lambda d: ["synth", write(d, "f", "x") + "/sub", *SMALL], "f/sub")

# calibrate: hostile captures
CAL_OUT = ["w/windows.json", "w/windows.fastvideo.json", "w/report.json", "w/report.md", "w/windows_heatmap.svg"]


def cal_case(name, make, needle, extra=()):
    case(name, lambda d: calibrate(make(d), "w/windows.json", *extra), needle, CAL_OUT)


cal_case("capture with a wrapping shape", wrapped_capture, "c.safetensors")
cal_case("capture with shape past 2^63",
         lambda d: capture_dir(d, "c", *capture_header([2 ** 63, 1, 1, 1], per_tensor=4)), "c.safetensors")
cal_case("capture with shape 2^64",
         lambda d: capture_dir(d, "c", *capture_header([2 ** 64 - 1, 2, 1, 1], per_tensor=4)), "c.safetensors")
cal_case("capture with negative shape",
         lambda d: capture_dir(d, "c", *capture_header([-1, 1, 1, 1], per_tensor=4)), "c.safetensors")
cal_case("capture with float shape",
         lambda d: capture_dir(d, "c", *capture_header([1.5, 1, 1, 1], per_tensor=4)), "c.safetensors")
cal_case("capture with a zero dimension",
         lambda d: capture_dir(d, "c", *capture_header([0, 1, 1, 1], per_tensor=0)), "c.safetensors")
cal_case("capture without data (offsets past the end)",
         lambda d: capture_dir(d, "c", capture_header([1, 1, 1, 1])[0], 0), "c.safetensors")
def raw_capture(d, content):
    caps = os.path.join(d, "c")
    os.makedirs(caps, exist_ok=True)
    write(caps, "c.safetensors", content, "wb")
    return caps


cal_case("capture with header length 2^64 - 1", lambda d: raw_capture(d, b"\xff" * 8 + b"{}" + b"\0" * 16),
         "c.safetensors")
cal_case("capture with header length 2^63", lambda d: raw_capture(d, struct.pack("<Q", 2 ** 63) + b"{}"),
         "c.safetensors")
cal_case("capture with a deep header",
         lambda d: capture_dir(d, "c", None, 0, raw_header=deep_json(110000).encode()), "c.safetensors")
cal_case("capture with a deep metadata value",
         lambda d: capture_dir(d, "c", None, 0, raw_header=('{"__metadata__": {"prompt": ' + deep_json(100000) +
                                                             "}}").encode()), "c.safetensors")
cal_case("capture with 1e400 in the header",
         lambda d: capture_dir(d, "c", None, 0, raw_header=b'{"q": {"dtype": "F32", "shape": [1e400, 1, 1, 1], '
                                                          b'"data_offsets": [0, 4]}}'), "c.safetensors")
cal_case("capture with a 1 MB metadata value",
         lambda d: capture_dir(d, "c", *capture_header([1, 1, 1, 1], meta=dict(META, step="9" * 1000000))),
         "step")
cal_case("capture with a wrapping video_shape",
         lambda d: capture_dir(d, "c", *capture_header([1, 1, 1, 1], meta=dict(META, video_shape="4294967296x"
                                                                                "4294967296x1"))), "video_shape")
cal_case("capture with text_len past the token limit",
         lambda d: capture_dir(d, "c", *capture_header([1, 1, 1, 1], meta=dict(META, text_len="9223372036854775807"))),
         "text_len")


def overlapping(d):
    header, data = capture_header([1, 1, 1, 1])
    header["k"]["data_offsets"] = [0, 4]
    return capture_dir(d, "c", header, data)


cal_case("capture with overlapping tensors", overlapping, "overlap")
cal_case("capture of 7 bytes", lambda d: raw_capture(d, b"\1" * 7), "c.safetensors")
cal_case("capture that is a directory", lambda d: (os.makedirs(os.path.join(d, "c", "x.safetensors")),
                                                   os.path.join(d, "c"))[1], "x.safetensors")
cal_case("capture directory missing", lambda d: os.path.join(d, "missing"), "missing")
cal_case("capture directory empty", lambda d: (os.makedirs(os.path.join(d, "e")), os.path.join(d, "e"))[1], "e")
# calibrate: numbers and outputs (on good captures)
GOOD = {}


def good(d):
    return synth_captures(GOOD["cli"], d)


for v in NEG + HUGE:
    cal_case(f"calibrate --dense-steps {v}", good, "--dense-steps", ["--dense-steps", v])
for v in ["-1", "9223372036854775807"]:
    cal_case(f"calibrate --threads {v}", good, "--threads", ["--threads", v])
for v in ["nan", "inf", "-0.5", "1.5"]:
    case(f"calibrate --target-sparsity {v}",
         (lambda v: lambda d: calibrate(good(d), "w/windows.json", "--rule", "budget", "--target-sparsity", v))(v),
         "--target-sparsity", CAL_OUT)
cal_case("calibrate --tile 0x4x4", good, "--tile", ["--tile", "0x4x4"])
cal_case("calibrate --candidates 0x1x1", good, "--candidates", ["--candidates", "0x1x1"])
case("calibrate -o /dev/full", lambda d: calibrate(good(d), "/dev/full"), "/dev/full",
     ["windows.fastvideo.json", "report.json", "report.md", "windows_heatmap.svg"])
case("calibrate --report-dir /dev/full", lambda d: calibrate(good(d), "w/windows.json", "--report-dir", "/dev/full"),
     "/dev/full", CAL_OUT)
case("calibrate: a report file is a directory (a later write fails)",
     lambda d: (os.makedirs(os.path.join(d, "w", "report.md")), calibrate(good(d), "w/windows.json"))[1],
     "report.md", ["w/windows.json", "w/windows.fastvideo.json", "w/report.json", "w/windows_heatmap.svg"])

# bench: checked before any GPU work
for v in ["0"] + NEG + HUGE:
    case(f"bench --batch {v}", ["bench", "--batch", v], "--batch")
    case(f"bench --heads {v}", ["bench", "--heads", v], "--heads")
for v in NEG + HUGE[:3]:
    case(f"bench --kv-heads {v}", ["bench", "--kv-heads", v], "--kv-heads")
    case(f"bench --text {v}", ["bench", "--text", v], "--text")
case("bench --batch wrapping the buffer size", ["bench", "--batch", "1099511627776", "--heads", "65536"], "--batch")
case("bench --shape wrapping", ["bench", "--shape", "4294967296x4294967296x1"], "--shape")
case("bench --reps 0", ["bench", "--reps", "0"], "--reps")


# ---- runner ----

def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def leftovers(d, before):
    found = []
    for root, dirs, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            if p not in before:
                found.append(os.path.relpath(p, d))
    return found


def run_case(cli, name, args, needle, outputs, memory_limit):
    with tempfile.TemporaryDirectory() as d:
        argv = args(d) if callable(args) else args
        before = {os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs}
        try:
            r = subprocess.run([cli, *argv], cwd=d, capture_output=True, timeout=TIMEOUT,
                               preexec_fn=limit_memory if memory_limit else None)
        except subprocess.TimeoutExpired:
            return f"hung (no exit after {TIMEOUT} s)"
        err = r.stderr.decode(errors="replace")
        problems = []
        if r.returncode != 2:
            what = f"killed by signal {-r.returncode}" if r.returncode < 0 else f"exit {r.returncode}"
            problems.append(f"{what}, expected 2")
        if needle not in err:
            problems.append(f"stderr does not name {needle!r}")
        if len(err) > MAX_MESSAGE:
            problems.append(f"stderr of {len(err)} characters (an unbounded dump?)")
        for o in outputs:
            if os.path.exists(os.path.join(d, o)):
                problems.append(f"left {o} behind")
        new = [f for f in leftovers(d, before) if ".tmp-" in f or f in ("plan.json",)]
        if new:
            problems.append(f"left {new} behind")
        if problems:
            return "; ".join(problems) + f" | stderr: {err[:300]!r}"
        return None


def main():
    argv = sys.argv[1:]
    cli = os.path.abspath(argv[0])
    GOOD["cli"] = cli
    memory_limit = "--no-memory-limit" not in argv
    only = argv[argv.index("-k") + 1] if "-k" in argv else None
    cases = [c for c in CASES if only is None or only in c[0]]
    if "--list" in argv:
        for c in cases:
            print(c[0])
        return
    failures = []
    for name, args, needle, outputs in cases:
        problem = run_case(cli, name, args, needle, outputs, memory_limit)
        if problem:
            failures.append((name, problem))
            print(f"FAIL {name}: {problem}")
    print(f"{len(cases) - len(failures)} of {len(cases)} bad inputs rejected cleanly (exit 2, message naming the "
          f"argument, no output left behind)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
