"""`.ci/slurm-cluster` never damages the host's files (it runs as root on CI and developers' machines).

Every test runs the real script on temporary copies only, through its test-only overrides
(HPCRNN_HOSTS_FILE, HPCRNN_SLURM_ETC, HPCRNN_SLURM_STATE), and never as root: under root the script is run as
`nobody` (setpriv), with a stub `id` that says 0 where a test needs `start` to get past its root check, and
stubs for every command that would change the host (`ip`, apt-get, the daemons), which log their calls. So a
regression fails a test instead of touching /etc, the network or a running cluster.

- the hosts file edit (`hosts-add` / `hosts-remove`, what `start --nodes 2` / `stop` do): a write that fails
  halfway (file size limit), a directory where no temporary file can be made, a name that is already known —
  exit 1 with one line and the file byte-identical; a clean add + remove gives the file back byte for byte,
  with its mode, through a symbolic link, and on a bind-mounted file (root only, in a private mount namespace).
- a slurm.conf or slurmdbd.conf that the script did not write is refused and left byte-identical.
- `start --nodes 2` refuses (foreign config, a name already in the hosts file) before anything on the host
  changes: no `ip` change, no package install, no state directory, the hosts file untouched.

HPCRNN_TEST_CLUSTER_SCRIPT runs these tests against another copy of the script (to show that they fail
without the fix).
"""

from __future__ import annotations

import os
import resource
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

SCRIPT = Path(os.environ.get("HPCRNN_TEST_CLUSTER_SCRIPT", ROOT / ".ci" / "slurm-cluster"))
MARK = "# written by hpcrnn .ci/slurm-cluster"
HOSTS_MARK = "# hpcrnn .ci/slurm-cluster --nodes 2"
OUR_LINES = f"10.213.77.11 n1 {HOSTS_MARK}\n10.213.77.12 n2 {HOSTS_MARK}\n"
NOBODY = 65534
IS_ROOT = os.geteuid() == 0

# Read-only queries the checks may make; any other call of a stubbed command is a change to the host.
READ_ONLY = ("ip link show", "ip -4 route show", "ip -4 addr show", "ip netns list", "getent ")
STUBBED = (
    "apt-get runuser munge unmunge mungekey munged mariadb-admin mariadb mariadbd slurmctld slurmd slurmdbd "
    "sinfo squeue sacct sacctmgr scontrol scancel nsenter unshare mount umount getent hostname"
).split()

STUB = """#!/bin/sh
echo "$(basename "$0") $*" >>"$STUB_LOG"
exit 1
"""
IP_STUB = """#!/bin/sh
echo "ip $*" >>"$STUB_LOG"
case "$*" in
  "link show"*) exit 1 ;;                              # no such bridge/veth yet
  "-4 route show"*|"-4 addr show"*|"netns list"*) exit 0 ;;   # nothing uses the subnet
esac
exit 1
"""
ID_STUB = """#!/bin/sh
if [ "$1" = -u ]; then echo 0; exit 0; fi
exec /usr/bin/id "$@"
"""

if IS_ROOT and not shutil.which("setpriv"):
    pytest.skip(
        "running as root and setpriv is missing: would not run the script unprivileged", allow_module_level=True
    )


def hosts_text(n: int = 203) -> str:
    """A hosts file of n lines, the size of the one whose truncation to 29 lines started this."""
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback", "# a comment"]
    lines += [f"10.9.{i // 250}.{i % 250} host{i} host{i}.example.org" for i in range(n - len(lines))]
    return "\n".join(lines) + "\n"


@pytest.fixture
def box():
    """A scratch tree the unprivileged script can use: etc/hosts, etc/slurm/, state/ (absent), bin/ (stubs)."""
    d = Path(tempfile.mkdtemp(prefix="hpcrnn-cluster-test-"))
    os.chmod(d, 0o755)
    (d / "etc" / "slurm").mkdir(parents=True)
    (d / "etc" / "hosts").write_text(hosts_text())
    (d / "bin").mkdir()
    for name in STUBBED:
        (d / "bin" / name).write_text(STUB)
    (d / "bin" / "ip").write_text(IP_STUB)
    for f in (d / "bin").iterdir():
        f.chmod(0o755)
    shutil.copy(SCRIPT, d / "slurm-cluster")
    (d / "slurm-cluster").chmod(0o755)
    yield d
    for p in d.rglob("*"):  # chmod'ed read-only directories must not stop the clean-up
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(d)


def run(
    box: Path, *args: str, fsize: int | None = None, fake_root: bool = False, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the script copy in `box` with every path pointed into `box`, unprivileged (as nobody under root)."""
    if fake_root:
        (box / "bin" / "id").write_text(ID_STUB)
        (box / "bin" / "id").chmod(0o755)
    env = {
        **(env or {}),
        "PATH": f"{box / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C",
        "HPCRNN_HOSTS_FILE": str(box / "etc" / "hosts"),
        "HPCRNN_SLURM_ETC": str(box / "etc" / "slurm"),
        "HPCRNN_SLURM_STATE": str(box / "state"),
        "HPCRNN_SLURM_NODE": "testnode",
        "STUB_LOG": str(box / "stub.log"),
    }
    argv = ["bash", str(box / "slurm-cluster"), *args]
    if IS_ROOT:
        for p in [box, *box.rglob("*")]:
            os.lchown(p, NOBODY, NOBODY)
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv]

    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, preexec_fn=limit)


def host_changes(box: Path) -> list[str]:
    """The calls of stubbed commands that would have changed the host."""
    log = box / "stub.log"
    calls = log.read_text().splitlines() if log.exists() else []
    return [c for c in calls if not c.startswith(READ_ONLY)]


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def leftovers(d: Path, keep: set[str]) -> set[str]:
    return {p.name for p in d.iterdir()} - keep


# --------------------------------------------------------------------------- the hosts file


@pytest.mark.parametrize("with_ours", [True, False], ids=["remove", "add"])
def test_failed_write_leaves_hosts_byte_identical(box, with_ours):
    """A write that fails halfway (1 KiB file size limit: the 203-line file once became 29 lines, exit 0)."""
    hosts = box / "etc" / "hosts"
    if with_ours:
        hosts.write_text(hosts_text() + OUR_LINES)
    before = hosts.read_bytes()
    assert len(before) > 4096
    r = run(box, "hosts-remove" if with_ours else "hosts-add", fsize=1024)
    assert hosts.read_bytes() == before
    assert str(hosts) in one_line_error(r)
    assert leftovers(box / "etc", {"hosts", "slurm"}) == set()  # no temporary file left behind


def test_no_temporary_file_possible_leaves_hosts_byte_identical(box):
    """The hosts file's directory refuses new files: nothing is written over the file in place instead."""
    hosts = box / "etc" / "hosts"
    hosts.write_text(hosts_text() + OUR_LINES)
    before = hosts.read_bytes()
    (box / "etc").chmod(0o555)
    for cmd in ("hosts-remove", "hosts-add"):
        r = run(box, cmd)
        if cmd == "hosts-add":  # ours are there already: nothing to do, nothing done
            assert r.returncode == 0, r.stderr
        else:
            assert str(box / "etc") in one_line_error(r)
        assert hosts.read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o755])
@pytest.mark.parametrize("newline_at_end", [True, False])
def test_add_then_remove_gives_the_file_back(box, mode, newline_at_end):
    hosts = box / "etc" / "hosts"
    text = hosts_text() if newline_at_end else hosts_text().rstrip("\n")
    hosts.write_text(text)
    hosts.chmod(mode)
    r = run(box, "hosts-add")
    assert r.returncode == 0, r.stderr
    completed = text if newline_at_end else text + "\n"
    assert hosts.read_text() == completed + OUR_LINES
    assert stat.S_IMODE(hosts.stat().st_mode) == mode
    assert run(box, "hosts-add").returncode == 0  # idempotent
    assert hosts.read_text() == completed + OUR_LINES
    r = run(box, "hosts-remove")
    assert r.returncode == 0, r.stderr
    assert hosts.read_text() == completed  # every other line, in order (an unterminated last one now ends)
    assert stat.S_IMODE(hosts.stat().st_mode) == mode
    assert leftovers(box / "etc", {"hosts", "slurm"}) == set()
    assert not list((box / "state").iterdir())  # backup and start copy gone once verified


def test_remove_keeps_every_other_line_even_between_ours(box):
    hosts = box / "etc" / "hosts"
    mixed = "127.0.0.1 localhost\n" + OUR_LINES.splitlines(keepends=True)[0] + "10.1.1.1 other\n"
    mixed += OUR_LINES.splitlines(keepends=True)[1] + "10.1.1.2 last # a note\n"
    hosts.write_text(mixed)
    r = run(box, "hosts-remove")
    assert r.returncode == 0, r.stderr
    assert hosts.read_text() == "127.0.0.1 localhost\n10.1.1.1 other\n10.1.1.2 last # a note\n"


def test_symbolic_link_stays_a_link(box):
    real = box / "etc" / "real-hosts"
    real.write_text(hosts_text())
    hosts = box / "etc" / "hosts"
    hosts.unlink()
    hosts.symlink_to("real-hosts")
    assert run(box, "hosts-add").returncode == 0
    assert hosts.is_symlink() and real.read_text() == hosts_text() + OUR_LINES
    assert run(box, "hosts-remove").returncode == 0
    assert hosts.is_symlink() and real.read_text() == hosts_text()


def test_add_refuses_a_name_already_there(box):
    hosts = box / "etc" / "hosts"
    hosts.write_text(hosts_text() + "192.168.5.5 n2 n2.lab\n")
    before = hosts.read_bytes()
    line = one_line_error(run(box, "hosts-add"))
    assert "n2" in line and "already" in line
    assert hosts.read_bytes() == before


@pytest.mark.skipif(not IS_ROOT or not shutil.which("unshare"), reason="a bind mount needs root")
def test_bind_mounted_hosts_file(box):
    """In a container /etc/hosts is a bind-mounted file, which no rename can replace: the checked content is
    written into it instead. Tried in a private mount namespace (root only for the mount; the script runs as
    nobody), on a file in the scratch tree."""
    hosts = box / "etc" / "hosts"
    src = box / "mounted-hosts"
    src.write_text(hosts_text())
    for p in [box, *box.rglob("*")]:
        os.lchown(p, NOBODY, NOBODY)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HPCRNN_HOSTS_FILE": str(hosts),
        "HPCRNN_SLURM_STATE": str(box / "state"),
    }
    script = f'setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups -- bash "{box}/slurm-cluster"'
    sh = (
        f'mount --bind "{src}" "{hosts}" && {script} hosts-add && cat "{hosts}" >"{box}/after-add" && '
        f'{script} hosts-remove && cat "{hosts}" >"{box}/after-remove"'
    )
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", sh]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    if r.returncode != 0 and "mount" in r.stderr and not (box / "after-add").exists():
        pytest.skip(f"no private bind mount here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert (box / "after-add").read_text() == hosts_text() + OUR_LINES
    assert (box / "after-remove").read_text() == hosts_text()
    assert src.read_text() == hosts_text()


# --------------------------------------------------------------------------- config files and the order of checks


def write_configs(box: Path, foreign: str) -> dict[Path, bytes]:
    """slurm.conf and slurmdbd.conf: ours (marker on line 1), except `foreign`, someone else's."""
    files = {}
    for name in ("slurm.conf", "slurmdbd.conf"):
        p = box / "etc" / "slurm" / name
        text = f"{MARK}\nClusterName=localci\n" if name != foreign else "# the site's own\nClusterName=prod\n"
        if name == foreign:
            text += f"# mentions {MARK} further down, which does not make it ours\n"
        p.write_text(text)
        p.chmod(0o600)
        files[p] = p.read_bytes()
    return files


@pytest.mark.parametrize("foreign", ["slurm.conf", "slurmdbd.conf"])
@pytest.mark.parametrize(
    "args", [["start"], ["start", "--nodes", "2"], ["start", "--check"]], ids=["start", "start-nodes-2", "check"]
)
def test_foreign_config_refused_before_any_host_change(box, foreign, args):
    files = write_configs(box, foreign)
    hosts = box / "etc" / "hosts"
    before = hosts.read_bytes()
    r = run(box, *args, fake_root=True)
    for p, content in files.items():
        assert p.read_bytes() == content
    assert host_changes(box) == []
    assert hosts.read_bytes() == before
    assert not (box / "state").exists()
    assert leftovers(box / "etc" / "slurm", {"slurm.conf", "slurmdbd.conf"}) == set()
    line = one_line_error(r)
    assert foreign in line and "refusing" in line


def test_force_lets_start_past_a_foreign_config(box):
    """HPCRNN_SLURM_FORCE=1 is the one way past the refusal, for slurmdbd.conf too (checked with --check)."""
    write_configs(box, "slurmdbd.conf")
    r = run(box, "start", "--check", env={"HPCRNN_SLURM_FORCE": "1"})
    assert r.returncode == 0, r.stderr


def test_known_name_refused_before_any_host_change(box):
    """n1 already in the hosts file: `start --nodes 2` refuses before it makes a bridge or a namespace."""
    hosts = box / "etc" / "hosts"
    hosts.write_text(hosts_text() + "10.0.0.7 n1\n")
    before = hosts.read_bytes()
    r = run(box, "start", "--nodes", "2", fake_root=True)
    assert host_changes(box) == []
    assert hosts.read_bytes() == before
    assert not (box / "state").exists()
    assert "n1" in one_line_error(r)


def test_check_passes_and_changes_nothing(box):
    hosts = box / "etc" / "hosts"
    before = hosts.read_bytes()
    r = run(box, "start", "--nodes", "2", "--check")
    assert r.returncode == 0, r.stderr
    assert hosts.read_bytes() == before
    assert host_changes(box) == []
    assert not (box / "state").exists()
    assert list((box / "etc" / "slurm").iterdir()) == []
