"""Run adversarial cases (adversarial.yaml) in a child process and check what each one left behind.

`python run_cases.py CASES.json RESULTS.jsonl` runs the batch cases in this process, one after the
other (TensorFlow is imported once), each under a per-case alarm; the parent test starts it with a
memory cap (RLIMIT_AS) and restarts it after a crash. Every case is checked here (see `problems`),
so the parent only collects the verdicts. Process cases (`mode: process`) are run by the parent with
`run_process`, which applies the same checks.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

EXIT_CODES = {
    "OK": 0,
    "INTERNAL": 1,
    "USAGE": 2,
    "BAD_INPUT": 3,
    "GATE_FAILED": 4,
    "OUTPUT": 5,
    "RESOURCE": 6,
    "EXPORT": 7,
    "INTERRUPTED": 130,
    "PIPE": 141,
}
MEMORY_CAP = 8 * 2**30  # address space: TensorFlow alone reserves about 2.5 GiB
DEFAULT_TIMEOUT = 60
TEMP_NAME = re.compile(r"\.tmp")


def limit_memory() -> None:
    """preexec_fn of every child: a memory cap and no core files."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def expand(value: str, places: dict) -> str:
    return str(value).format(**places)


def case_places(places: dict, case_id: str) -> dict:
    out = Path(places["outroot"]) / case_id
    out.mkdir(parents=True, exist_ok=True)
    p = dict(places)
    p["out"] = str(out)
    p["out_name"] = out.name
    p["long242"] = str(out / ("n" * 236 + ".keras"))
    p["long300"] = str(out / ("n" * 294 + ".keras"))
    return p


def prepare(case: dict, places: dict) -> dict:
    """Copy the case's `setup` files ({dest: source}: the user's own files, placed before the run) and
    return their hashes, which `problems` checks afterwards (all but those the case lists as `absent`)."""
    import shutil

    hashes = {}
    for dest, source in (case.get("setup") or {}).items():
        dest, source = Path(expand(dest, places)), Path(expand(source, places))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        hashes[str(dest)] = hashlib.sha256(dest.read_bytes()).hexdigest()
    return hashes


def args_of(case: dict, places: dict) -> list[str]:
    args = [expand(a, places) for a in case["args"]]
    if case.get("quiet", True) and "--help" not in args and args and args[0] in ("prune", "sweep", "plan"):
        args.append("-q")
    return args


_HASHED: dict = {}  # (path, inode, size, mtime, ctime) -> sha256 of the content a snapshot read


def _content_hash(path: str, st: os.stat_result) -> str:
    """A regular file's sha256, read again only when its inode, size, mtime or ctime moved: any write
    moves its ctime (which no process can set back), so an unchanged stat is unchanged content, and
    each case's two snapshots no longer read the whole corpus again."""
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _HASHED:
        with open(path, "rb") as fh:
            _HASHED[key] = hashlib.sha256(fh.read()).hexdigest()
    return _HASHED[key]


def snapshot(*folders) -> dict:
    """Every entry below the folders: its kind and, for regular files, a hash (links not followed)."""
    out = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in dirs + files:
                p = os.path.join(root, name)
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode):
                    out[p] = ("file", _content_hash(p, st), st.st_ino)
                elif stat.S_ISLNK(st.st_mode):
                    out[p] = ("link", os.readlink(p))
                else:
                    out[p] = (stat.S_IFMT(st.st_mode), st.st_ino)
    return out


def _finite_model(path: Path) -> bool:
    import h5py
    import numpy as np

    def check(h5) -> bool:
        ok = True

        def visit(_name, obj):
            nonlocal ok
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f" and obj.size:
                ok = ok and bool(np.isfinite(obj[()]).all())

        h5.visititems(visit)
        return ok

    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z, z.open("model.weights.h5") as fh, h5py.File(fh, "r") as h5:
                return check(h5)
        with h5py.File(path, "r") as h5:
            return check(h5)
    except (OSError, KeyError):
        return True  # not a model we can read: the loader tests cover damaged outputs


def problems(
    case: dict, places: dict, code, stdout: str, stderr: str, before: dict, escaped: str | None, setup=None
) -> list:
    """Everything wrong with one run: [] when the case behaved."""
    found = []
    setup = setup or {}
    want = case["exit"] if isinstance(case["exit"], list) else [case["exit"]]
    codes = [EXIT_CODES[w] for w in want]
    if escaped:
        found.append(f"exception escaped: {escaped}")
    if code is None:
        found.append("hang (timeout)")
    elif code < 0:
        found.append(f"crash (signal {-code})")
    elif code == 1:
        found.append("exit 1 (internal error)")
    if code not in codes:
        found.append(f"exit {code}, expected {want}")
    if "Traceback" in stdout + stderr:
        found.append("traceback printed")
    if "Exception ignored" in stderr:
        found.append("'Exception ignored' printed")
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("· ")]
    failing = all(c not in (0, 141) for c in codes)
    if case.get("one_line", failing):
        if len(lines) != 1 or not lines[0].startswith(("prunecli: error: ", "prunecli: interrupted")):
            found.append(f"expected one error line, got {lines[:3]!r}")
    elif case.get("silent", not failing) and code == 0 and lines:  # a success prints nothing but progress under -q
        found.append(f"stderr not empty on success: {lines[:3]!r}")
    if case.get("fragment"):
        fragment = expand(case["fragment"], places)
        if not lines or fragment not in lines[-1]:
            found.append(f"fragment {fragment!r} not in {lines[-1:]!r}")
    after = snapshot(places["corpus"], places["text"])
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    if changed:
        found.append(f"corpus changed: {changed[:3]}")
    for p in case.get("special", []):
        p = expand(p, places)
        mode = os.lstat(p).st_mode if os.path.lexists(p) else 0
        if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
            found.append(f"{p} is no longer a special file")
    for p in case.get("exists", []):
        if not os.path.exists(expand(p, places)):
            found.append(f"{expand(p, places)} was not written")
    absent = list(case.get("absent", []))
    if code not in (0, None):
        absent += case.get("absent_if_failed", [])
    for p in absent:
        if os.path.lexists(expand(p, places)):
            found.append(f"{expand(p, places)} exists")
    gone = {expand(p, places) for p in absent}
    for p, digest in setup.items():
        if p in gone:
            continue
        if not os.path.isfile(p) or hashlib.sha256(Path(p).read_bytes()).hexdigest() != digest:
            found.append(f"the user's file {p} was changed or removed")
    for folder in (places["corpus"], places["out"]):
        for root, _dirs, files in os.walk(folder):
            for name in files:
                if TEMP_NAME.search(name) and os.path.join(root, name) not in setup:
                    found.append(f"temporary file left: {os.path.join(root, name)}")
                if name.startswith("MARKER_"):
                    found.append(f"payload ran: {os.path.join(root, name)}")
                if name.endswith((".keras", ".h5")) and root.startswith(places["out"]):
                    full = Path(root) / name
                    if full.is_file() and not full.is_symlink() and not _finite_model(full):
                        found.append(f"NaN or Inf weights saved in {full}")
    if case.get("json"):
        target = expand(case["json"], places)
        try:
            r = json.loads(Path(target).read_text(), parse_constant=_no_constant)
            if case.get("report_check") and not eval(case["report_check"], {}, {"r": r}):  # noqa: S307 - our manifest
                found.append(f"report check failed: {case['report_check']}")
        except (OSError, ValueError) as exc:
            found.append(f"{target} is not valid JSON: {exc}")
    return found


def _no_constant(name):
    raise ValueError(f"bare {name} in JSON")


class CaseTimeout(BaseException):
    """Raised by the alarm: a BaseException, so no `except Exception` in prunecli swallows it."""


def _alarm(_signum, _frame):
    raise CaseTimeout


def run_batch(cases: list, places: dict, results: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for key in [k for k in os.environ if k.startswith("PRUNECLI_")]:
        del os.environ[key]
    import keras  # noqa: F401 - imported once for every case, as the first case would
    import tensorflow  # noqa: F401
    from click.testing import CliRunner

    from prunecli import interrupts
    from prunecli.cli import main

    gc.collect()
    gc.freeze()  # what the imports built lives as long as this process: no collection walks it again

    signal.signal(signal.SIGALRM, _alarm)
    with open(results, "a", encoding="utf-8") as log:
        for case in cases:
            log.write(json.dumps({"id": case["id"], "started": True}) + "\n")
            log.flush()
            p = case_places(places, case["id"])
            before = snapshot(p["corpus"], p["text"])
            setup = prepare(case, p)
            os.chdir(p["out"])
            interrupts.reset()
            env = {k: expand(v, p) for k, v in (case.get("env") or {}).items()}
            start = time.perf_counter()
            code, stdout, stderr, escaped = None, "", "", None
            signal.alarm(int(case.get("timeout", DEFAULT_TIMEOUT)))
            try:
                result = CliRunner().invoke(main, args_of(case, p), env=env, catch_exceptions=True)
                code, stdout, stderr = result.exit_code, result.stdout, result.stderr
                if result.exception is not None and not isinstance(result.exception, SystemExit):
                    escaped = f"{type(result.exception).__name__}: {result.exception}"
            except CaseTimeout:
                code = None
            finally:
                signal.alarm(0)
            found = problems(case, p, code, stdout, stderr, before, escaped, setup)
            verdict = {"id": case["id"], "exit": code, "problems": found, "seconds": time.perf_counter() - start}
            verdict["stderr"] = stderr[-400:]
            log.write(json.dumps(verdict) + "\n")
            log.flush()


def run_process(case: dict, places: dict) -> dict:
    """One case as a real `python -m prunecli`, for closed pipes and signals."""
    p = case_places(places, case["id"])
    before = snapshot(p["corpus"], p["text"])
    setup = prepare(case, p)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNECLI_")}
    env.update({k: expand(v, p) for k, v in (case.get("env") or {}).items()})
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunecli", *args_of(case, p)],
        cwd=p["out"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit_memory,
    )
    seen = []
    if case.get("pipe") == "close":
        proc.stdout.close()  # the reader goes away before anything is written
    sig = case.get("signal")
    if sig:
        deadline = time.monotonic() + case.get("timeout", DEFAULT_TIMEOUT)
        for line in proc.stderr:
            seen.append(line)
            if sig["when"] in line or time.monotonic() > deadline:
                for _ in range(int(sig.get("count", 1))):
                    proc.send_signal(getattr(signal, f"SIG{sig['sig']}"))
                    time.sleep(0.05)
                break
    try:
        if proc.stdout is not None and not proc.stdout.closed:
            out, err = proc.communicate(timeout=case.get("timeout", DEFAULT_TIMEOUT))
        else:
            err = proc.stderr.read()
            proc.wait(timeout=case.get("timeout", DEFAULT_TIMEOUT))
            out = ""
        code = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        out, err, code = "", "", None
    stderr = "".join(seen) + (err or "")
    found = problems(case, p, code, out or "", stderr, before, None, setup)
    return {
        "id": case["id"],
        "exit": code,
        "problems": found,
        "seconds": time.perf_counter() - start,
        "stderr": stderr[-400:],
    }


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    run_batch(spec["cases"], spec["places"], Path(sys.argv[2]))
