#!/usr/bin/env python3
"""Start and stop a real NDIF server (PyPI ``ndif`` 0.1.2) on this machine, for tests.

Stdlib only, so the project venv (pytest) can import it; the server processes run
from the server-only venv ``.ndif-venv`` (tools/ndif/setup_env.sh).

Everything runs inside a network namespace that has only ``lo`` up, so the one
address any server or client here can reach is 127.0.0.1 *of that namespace*
(Ray listens on every address it finds; in the namespace there is only loopback).
The client (pytest) must run in the same namespace.

Pieces, in start order: redis-server, moto_server (S3), ``ray start --head`` (one
logical GPU so ndif's controller manages the node), ndif's controller, the API under
gunicorn on 127.0.0.1:8001 (which spawns the queue dispatcher). The model is pinned
through NDIF_DEPLOYMENTS and loads in ``ndif_cpu_actor.CPUModelActor``.

Teardown is by pid only: every process is started in its own session, and stop()
kills the gunicorn master's children first, then the master, then every process in
the sessions it started (this covers Ray's daemons and workers), SIGTERM then SIGKILL.
It does not call ``ray stop --force``, which kills Ray processes by name machine-wide.

Commands (see tests/ndif/README.md):
  stack.py pytest [PYTEST ARGS]   make a namespace, run pytest for tests/ndif inside it
                                  (the session fixture starts/stops the stack), delete it
  stack.py run -- CMD ...         make a namespace, start the stack in it, run CMD there
                                  with WORKBENCH_NDIF_URL/_MODEL set, stop, delete
  stack.py up NAME / down NAME    leave a stack running in namespace NAME / stop it
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VENV = Path(os.environ.get("WORKBENCH_NDIF_VENV", REPO / ".ndif-venv"))
STATE_ROOT = Path(os.environ.get("WORKBENCH_NDIF_HOME", REPO / ".ndif"))
DEFAULT_MODEL = STATE_ROOT / "models" / "SmolLM2-135M-Instruct"
PROJECT_PY = Path(os.environ.get("WORKBENCH_PROJECT_PY", REPO / ".venv" / "bin" / "python"))

HOST = "127.0.0.1"
PORTS = {"redis": 6379, "s3": 9000, "ray_gcs": 6385, "ray_client": 10001, "dashboard": 8265, "api": 8001}
API_URL = f"http://{HOST}:{PORTS['api']}"


def log(msg: str) -> None:
    print(f"[ndif-stack {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def server_threads() -> int:
    """Torch threads of the server's model actor. Clients comparing with a local run use the same count:
    float32 sums in another order differ in the last bits (about 4e-5 on logits of 15)."""
    return int(os.environ.get("OMP_NUM_THREADS", "2"))


def model_key(model_dir: Path | str) -> str:
    """The key nnsight 0.8's LanguageModel(<folder>) sends (json.dumps of repo_id/revision/task)."""
    data = {"repo_id": str(model_dir), "revision": None, "task": "text-generation"}
    return "nnsight.modeling.transformers.TransformersModel:" + json.dumps(data)


# ----------------------------------------------------------------------------- processes


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[3])


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _alive(pid: int) -> bool:
    return _stat(pid) is not None


def children_of(pid: int) -> list[int]:
    return [p for p in _all_pids() if (s := _stat(p)) and s[0] == pid]


def in_sessions(sids: set[int]) -> list[int]:
    me = os.getpid()
    return [p for p in _all_pids() if p != me and (s := _stat(p)) and s[1] in sids]


def in_netns(netns_inode: int) -> list[int]:
    me = os.getpid()
    out = []
    for p in _all_pids():
        if p == me:
            continue
        try:
            if os.stat(f"/proc/{p}/ns/net").st_ino == netns_inode and _alive(p):
                out.append(p)
        except OSError:
            pass
    return out


def _reap(pids: list[int]) -> None:
    """Collect exit statuses of our own children (no zombies left behind; init may not reap)."""
    for p in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(p, os.WNOHANG)


def kill_pids(pids: list[int], what: str, grace: float = 5.0) -> None:
    """SIGTERM the given pids, wait up to `grace` s, SIGKILL what is left."""
    _reap(pids)
    pids = [p for p in pids if _alive(p)]
    if not pids:
        return
    log(f"stopping {what}: SIGTERM {pids}")
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    left = [p for p in pids if _alive(p)]
    if left:
        log(f"stopping {what}: SIGKILL {left}")
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(p) for p in left):
            time.sleep(0.1)
    _reap(pids)


# ----------------------------------------------------------------------------- namespace


def netns_create(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    log(f"network namespace {name} created (lo only)")


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return None


def netns_delete(name: str) -> None:
    ino = netns_inode(name)
    if ino is None:
        return
    # Anything still living in the namespace was started by us (it is ours alone).
    kill_pids(in_netns(ino), f"leftover processes in {name}", grace=5)
    subprocess.run(["ip", "netns", "del", name], check=False)
    log(f"network namespace {name} deleted")


def only_loopback() -> bool:
    """True inside a namespace whose only interface is lo."""
    return [n for _, n in socket.if_nameindex()] == ["lo"]


# ----------------------------------------------------------------------------- stack


def _http_get(path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(API_URL + path, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


class StackError(RuntimeError):
    pass


class Stack:
    """The running server processes; ``start()`` and ``stop()`` must be called inside the namespace."""

    def __init__(self, model_dir: Path | str = DEFAULT_MODEL, run_dir: Path | str | None = None):
        self.model_dir = Path(model_dir).resolve()
        self.run_dir = Path(run_dir or STATE_ROOT / "run" / f"stack-{os.getpid()}")
        self.ray_tmp = Path(f"/tmp/wbndif-{os.getpid()}")  # short: Ray's unix socket paths are length-limited
        self.procs: dict[str, int] = {}  # name -> pid (each the leader of its own session)
        self.url = API_URL
        self.timings: dict[str, float] = {}

    # -- environment
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME"))}
        env.update(
            PATH=f"{VENV / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
            PYTHONPATH=str(HERE),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            RAY_USAGE_STATS_ENABLED="0",
            NDIF_REDIS_URL=f"redis://{HOST}:{PORTS['redis']}",
            NDIF_OBJECT_STORE_URL=f"http://{HOST}:{PORTS['s3']}",
            NDIF_OBJECT_STORE_ACCESS_KEY="testing",
            NDIF_OBJECT_STORE_SECRET_KEY="testing",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            NDIF_RAY_ADDRESS=f"ray://{HOST}:{PORTS['ray_client']}",
            NDIF_DEFAULT_DTYPE="float32",
            NDIF_DEFAULT_MODEL_ACTOR_CLASS="ndif_cpu_actor.CPUModelActor",
            NDIF_DEPLOYMENTS=model_key(self.model_dir),
            NDIF_API_PORT=str(PORTS["api"]),
            NDIF_API_WORKERS="1",
            NDIF_STATUS_TTL_S="1",
            NDIF_INFLUX_ENABLED="false",
            NO_PROXY="*",
            OMP_NUM_THREADS=str(server_threads()),
        )
        for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NDIF_LOKI_URL"):
            env.pop(k, None)
        return env

    # -- helpers
    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.run_dir / f"{name}.log", "ab") as logf:
            p = subprocess.Popen(
                argv,
                env=env,
                cwd=self.run_dir,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs[name] = p.pid
        self._write_state()
        return p

    def _write_state(self) -> None:
        state = {
            "procs": self.procs,
            "url": self.url,
            "model_dir": str(self.model_dir),
            "run_dir": str(self.run_dir),
            "ray_tmp": str(self.ray_tmp),
            "owner": os.getpid(),
        }
        (self.run_dir / "state.json").write_text(json.dumps(state, indent=1))

    def _wait(self, what: str, ok, timeout: float, proc: subprocess.Popen | None = None) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if ok():
                self.timings[what] = round(time.time() - t0, 1)
                log(f"{what} ready in {self.timings[what]} s")
                return
            if proc is not None and proc.poll() is not None:
                raise StackError(
                    f"{what} exited with {proc.returncode}; see {self.run_dir}/{what}.log\n" + self.tail(what)
                )
            time.sleep(0.5)
        raise StackError(f"{what} not ready after {timeout} s; see {self.run_dir}\n" + self.tail(what))

    def tail(self, name: str, n: int = 40) -> str:
        try:
            lines = (self.run_dir / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def _run_to_end(self, name: str, argv: list[str], env: dict[str, str], timeout: float) -> None:
        p = self._spawn(name, argv, env)
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise StackError(f"{name} did not finish in {timeout} s\n" + self.tail(name)) from None
        if rc != 0:
            raise StackError(f"{name} failed with exit code {rc}\n" + self.tail(name))

    # -- start
    def start(self, deploy_timeout: float = 300) -> Stack:
        if not only_loopback():
            raise StackError(
                "refusing to start: not inside a network namespace with only `lo` "
                f"(interfaces: {socket.if_nameindex()}); use tools/ndif/stack.py"
            )
        for exe in ("python", "ray", "gunicorn", "moto_server"):
            if not (VENV / "bin" / exe).exists():
                raise StackError(f"{VENV}/bin/{exe} missing: run tools/ndif/setup_env.sh")
        if not shutil.which("redis-server"):
            raise StackError("redis-server missing: run tools/ndif/setup_env.sh")
        if not (self.model_dir / "config.json").exists():
            raise StackError(f"model folder {self.model_dir} missing: run tools/ndif/prepare_model.py")
        for name, port in PORTS.items():
            if _port_open(port):
                raise StackError(f"port {port} ({name}) already in use in this namespace")
        self._prune_old_runs()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        env = self.env()
        py = str(VENV / "bin" / "python")
        try:
            p = self._spawn(
                "redis",
                [
                    "redis-server",
                    "--bind",
                    HOST,
                    "--port",
                    str(PORTS["redis"]),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.run_dir),
                ],
                env,
            )
            self._wait("redis", lambda: _port_open(PORTS["redis"]), 30, p)
            p = self._spawn(
                "s3", [str(VENV / "bin" / "moto_server"), "-H", HOST, "-p", str(PORTS["s3"])], env
            )
            self._wait("s3", lambda: _port_open(PORTS["s3"]), 60, p)
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            resources = {"head": 10, "cuda_memory_bytes": 8_000_000_000, "cpu_memory_bytes": ram}
            self._run_to_end(
                "ray",
                [
                    str(VENV / "bin" / "ray"),
                    "start",
                    "--head",
                    f"--node-ip-address={HOST}",
                    f"--port={PORTS['ray_gcs']}",
                    f"--ray-client-server-port={PORTS['ray_client']}",
                    f"--dashboard-host={HOST}",
                    f"--dashboard-port={PORTS['dashboard']}",
                    "--num-cpus=2",
                    "--num-gpus=1",
                    f"--resources={json.dumps(resources)}",
                    "--object-store-memory=200000000",
                    f"--temp-dir={self.ray_tmp}",
                    "--disable-usage-stats",
                ],
                env,
                timeout=180,
            )
            self.timings["ray"] = round(time.time() - t0, 1)
            log(f"ray head up at +{self.timings['ray']} s")
            cenv = dict(env, RAY_ADDRESS=f"{HOST}:{PORTS['ray_gcs']}")
            self._run_to_end(
                "controller",
                [py, "-m", "ndif.services.ray.deployments.controller.controller"],
                cenv,
                timeout=180,
            )
            p = self._spawn(
                "api",
                [  # gunicorn, with a fix for request bodies over 1 MiB (see ndif_api.py)
                    py,
                    str(HERE / "ndif_api.py"),
                    "-c",
                    "python:ndif.services.api.gunicorn_conf",
                    "-b",
                    f"{HOST}:{PORTS['api']}",
                    "ndif.services.api.app:app",
                ],
                env,
            )
            self._wait("api", lambda: _http_get("/connected")[0] == 200, 180, p)
            self._wait("model", self.model_running, deploy_timeout, p)
        except BaseException:
            log("start failed; tearing down what was started")
            self.stop()
            raise
        self.timings["total"] = round(time.time() - t0, 1)
        log(f"stack ready at {self.url} in {self.timings['total']} s (logs: {self.run_dir})")
        return self

    def _prune_old_runs(self, keep: int = 5) -> None:
        """Keep the logs of the last few stacks only."""
        runs = sorted(self.run_dir.parent.glob("stack-*"), key=lambda p: p.stat().st_mtime)
        for old in runs[:-keep]:
            state = old / "state.json"
            try:
                if state.exists() and json.loads(state.read_text()).get("procs"):
                    continue  # possibly still running (e.g. `stack.py up`)
            except ValueError:
                pass
            shutil.rmtree(old, ignore_errors=True)

    def status(self) -> dict:
        code, body = _http_get("/status", timeout=30)
        if code != 200:
            return {}
        try:
            return json.loads(body)
        except ValueError:
            return {}

    def model_running(self) -> bool:
        """True once a replica of the pinned model reports RUNNING in /status."""
        key = model_key(self.model_dir)
        deployments = self.status().get("deployments", {})
        return any(
            isinstance(d, dict) and d.get("model_key") == key and d.get("application_state") == "RUNNING"
            for d in deployments.values()
        )

    # -- stop
    def stop(self) -> None:
        sids = {pid for pid in self.procs.values()}
        api = self.procs.get("api")
        if api and _alive(api):
            # gunicorn's master keeps its (spawned) dispatcher alive on SIGTERM: children first.
            kill_pids(children_of(api), "gunicorn children")
            kill_pids([api], "gunicorn master")
        for name in ("controller", "ray", "s3", "redis"):
            pid = self.procs.get(name)
            if pid and _alive(pid):
                kill_pids([pid], name)
        # Ray's daemons and workers (and anything else we started) stay in the sessions we opened.
        kill_pids(in_sessions(sids), "remaining processes of the stack's sessions")
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        self.procs = {}
        if self.run_dir.exists():
            self._write_state()

    @classmethod
    def from_state(cls, run_dir: Path) -> Stack:
        state = json.loads((Path(run_dir) / "state.json").read_text())
        s = cls(state["model_dir"], state["run_dir"])
        s.procs = {k: int(v) for k, v in state["procs"].items()}
        s.ray_tmp = Path(state["ray_tmp"])
        return s


# ----------------------------------------------------------------------------- CLI


def _reexec_in(ns: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    return subprocess.call(["ip", "netns", "exec", ns, *argv], env=env)


def _guarded(ns: str, body) -> int:
    """Create ns, run body(), delete ns on any exit (including SIGTERM/SIGINT/SIGHUP)."""

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    netns_create(ns)
    try:
        return body()
    finally:
        netns_delete(ns)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("pytest", help="run tests/ndif in a fresh namespace")
    sp.add_argument("args", nargs=argparse.REMAINDER)
    sr = sub.add_parser("run", help="start the stack in a fresh namespace and run a command there")
    sr.add_argument("args", nargs=argparse.REMAINDER)
    su = sub.add_parser("up", help="create namespace NAME and leave a stack running in it")
    su.add_argument("name")
    sd = sub.add_parser("down", help="stop the stack in namespace NAME and delete NAME")
    sd.add_argument("name")
    si = sub.add_parser("_inside", help=argparse.SUPPRESS)
    si.add_argument("mode")
    si.add_argument("args", nargs=argparse.REMAINDER)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("pytest", "run", "_inside"):  # pass everything after verb (and mode) through
        n = 2 if argv[0] == "_inside" else 1
        a = ap.parse_args(argv[:n])
        a.args = argv[n:]
    else:
        a = ap.parse_args(argv)
    if a.cmd != "_inside" and os.geteuid() != 0:
        ap.error("network namespaces need root (ip netns add)")
    me = [sys.executable, str(Path(__file__).resolve())]
    args = list(getattr(a, "args", None) or [])
    if args[:1] == ["--"]:
        args = args[1:]

    if a.cmd == "pytest":
        ns = f"wbndif-{os.getpid()}"
        env = dict(
            os.environ,
            WORKBENCH_NDIF="1",
            WORKBENCH_NDIF_NETNS=ns,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        cmd = [
            str(PROJECT_PY),
            "-m",
            "pytest",
            str(REPO / "tests" / "ndif"),
            "-m",
            "ndif",
            "-p",
            "no:cacheprovider",
            *args,
        ]
        return _guarded(ns, lambda: _reexec_in(ns, cmd, env))
    if a.cmd == "run":
        ns = f"wbndif-{os.getpid()}"
        return _guarded(ns, lambda: _reexec_in(ns, [*me, "_inside", "run", *args]))
    if a.cmd == "up":
        netns_create(a.name)
        rc = _reexec_in(a.name, [*me, "_inside", "up"])
        if rc != 0:
            netns_delete(a.name)
        return rc
    if a.cmd == "down":
        rc = 0
        run_file = STATE_ROOT / "run" / f"ns-{a.name}"
        if run_file.exists():
            Stack.from_state(Path(run_file.read_text().strip())).stop()
            run_file.unlink()
        netns_delete(a.name)
        return rc
    if a.cmd == "_inside":
        stack = Stack()
        if a.mode == "up":
            stack.start()
            ns = os.environ.get("WORKBENCH_NDIF_NETNS", "")
            (STATE_ROOT / "run").mkdir(parents=True, exist_ok=True)
            for name in os.listdir("/run/netns"):
                if netns_inode(name) == os.stat("/proc/self/ns/net").st_ino:
                    ns = name
            (STATE_ROOT / "run" / f"ns-{ns}").write_text(str(stack.run_dir))
            print(stack.url)
            return 0
        try:
            stack.start()
            env = dict(os.environ, WORKBENCH_NDIF_URL=stack.url, WORKBENCH_NDIF_MODEL=str(stack.model_dir))
            return subprocess.call(args, env=env) if args else 0
        finally:
            stack.stop()
    return 2


if __name__ == "__main__":
    sys.exit(main())
