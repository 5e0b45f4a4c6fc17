"""sftp and scp through Lockgate: relayed to the target's own SFTP server, each file audited."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.integration.ssh.conftest import SshGateway, ended_session

pytestmark = pytest.mark.ssh


def _sftp(gw: SshGateway, token: str, batch: str, tmp: Path) -> subprocess.CompletedProcess[bytes]:
    # Commands on stdin, not `-b FILE`: batch mode turns on BatchMode, which disables the
    # password prompt the token answers.
    return subprocess.run(
        ["sftp", *gw.ssh_options(), "-P", str(gw.port), gw.login()],
        env=gw.client_env(token),
        capture_output=True,
        input=batch.encode(),
        timeout=60,
    )


def _scp(gw: SshGateway, token: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["scp", *gw.ssh_options(), "-P", str(gw.port), *args],
        env=gw.client_env(token),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_sftp_upload_and_download_are_relayed_and_audited(
    gateway: SshGateway, tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    source = remote / "source.bin"
    source.write_bytes(os.urandom(300_000))
    upload = os.urandom(200_000)
    (tmp_path / "up.bin").write_bytes(upload)
    token = gateway.token("sftp-user")
    r = _sftp(
        gateway,
        token,
        f"put {tmp_path / 'up.bin'} {remote / 'uploaded.bin'}\n"
        f"get {source} {tmp_path / 'down.bin'}\n"
        f"mkdir {remote / 'newdir'}\n"
        f"ls {remote}\n",
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert (remote / "uploaded.bin").read_bytes() == upload
    assert (tmp_path / "down.bin").read_bytes() == source.read_bytes()
    assert (remote / "newdir").is_dir()

    session = ended_session(gateway, "sftp-user", n_commands=4)
    by_kind = {c["kind"]: c for c in session["commands"]}
    assert by_kind["ssh.subsystem"]["text"] == "subsystem sftp"
    up = by_kind["sftp.upload"]
    assert up["text"] == f"upload {remote / 'uploaded.bin'}"
    assert up["bytes_out"] == len(upload)
    assert up["status"] == f"upload sha256:{_sha(upload)}"
    down = by_kind["sftp.download"]
    assert down["text"] == f"download {source}"
    assert down["bytes_out"] == 300_000
    assert down["status"] == f"download sha256:{_sha(source.read_bytes())}"
    assert by_kind["sftp.mkdir"]["status"] == "ok"


def test_sftp_path_rule_refuses_download_from_etc(gateway: SshGateway, tmp_path: Path) -> None:
    token = gateway.token("sftp-etc")
    r = _sftp(gateway, token, f"get /etc/hostname {tmp_path / 'h'}\n", tmp_path)
    # OpenSSH's sftp shows the status code's own text, not the server's message.
    assert b'remote open "/etc/hostname": Permission denied' in r.stderr
    assert not (tmp_path / "h").exists()
    session = ended_session(gateway, "sftp-etc", n_commands=2)
    denied = [c for c in session["commands"] if c["decision"] == "deny"]
    assert [(c["kind"], c["text"], c["rule"]) for c in denied] == [
        ("sftp.download", "download /etc/hostname", "no-etc-download")
    ]


def test_contractors_cannot_upload(gateway: SshGateway, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    token = gateway.token("contractor", groups=("ops", "contractors"))
    r = _sftp(gateway, token, f"put {tmp_path / 'f'} {tmp_path / 'copy'}\n", tmp_path)
    assert b"Permission denied" in r.stderr
    assert not (tmp_path / "copy").exists()
    session = ended_session(gateway, "contractor", n_commands=2)
    (denied,) = [c for c in session["commands"] if c["decision"] == "deny"]
    assert denied["rule"] == "contractors-read-only"
    assert denied["reason"] == "contractors may not change files"


def test_scp_both_ways_and_legacy_scp_as_a_command(gateway: SshGateway, tmp_path: Path) -> None:
    data = os.urandom(123_457)
    (tmp_path / "a").write_bytes(data)
    token = gateway.token("scp-user")
    target = f"{gateway.login()}:{tmp_path / 'b'}"
    r = _scp(gateway, token, str(tmp_path / "a"), target)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b").read_bytes() == data
    # scp refuses '#' in a remote user name when downloading: RESOURCE@GATEWAY works too.
    plain = "target@127.0.0.1"
    r = _scp(gateway, token, f"{plain}:{tmp_path / 'b'}", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "c").read_bytes() == data
    # The original scp protocol (-O) runs `scp -t` as an exec command on the target.
    r = _scp(gateway, token, "-O", str(tmp_path / "a"), f"{gateway.login()}:{tmp_path / 'd'}")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d").read_bytes() == data

    session = ended_session(gateway, "scp-user")
    (cmd,) = [c for c in session["commands"] if c["kind"] == "ssh.exec"]
    assert cmd["text"].startswith("scp -t ")


def test_legacy_scp_cannot_get_around_a_path_rule(gateway: SshGateway, tmp_path: Path) -> None:
    token = gateway.token("scp-old")
    r = _scp(gateway, token, "-O", "target@127.0.0.1:/etc/hostname", str(tmp_path / "h"))
    assert r.returncode != 0
    assert b"lockgate: refused: rule 'no-etc-download' denies download of '/etc/hostname'" in (
        r.stderr
    )
    assert not (tmp_path / "h").exists()
    (cmd,) = ended_session(gateway, "scp-old")["commands"]
    assert (cmd["kind"], cmd["decision"], cmd["rule"]) == ("ssh.exec", "deny", "no-etc-download")


def _rsync(gw: SshGateway, token: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    ssh = shlex.join(["ssh", *gw.ssh_options(), "-p", str(gw.port)])
    return subprocess.run(
        ["rsync", "-e", ssh, *args],
        env=gw.client_env(token),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_over_ssh_both_ways_and_its_paths_meet_the_rules(
    gateway: SshGateway, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = {"a.bin": os.urandom(70_000), "sub/b.txt": b"hello\n" * 1000}
    for name, data in files.items():
        (src / name).write_bytes(data)
    token = gateway.token("rsync-user")
    r = _rsync(gateway, token, "-a", f"{src}/", f"{gateway.login()}:{tmp_path / 'up'}/")
    assert r.returncode == 0, r.stderr
    r = _rsync(gateway, token, "-a", f"target@127.0.0.1:{tmp_path / 'up'}/", f"{tmp_path / 'down'}")
    assert r.returncode == 0, r.stderr
    for name, data in files.items():
        assert (tmp_path / "up" / name).read_bytes() == data
        assert (tmp_path / "down" / name).read_bytes() == data
    # A path rule holds for rsync as for sftp and scp: no download from /etc. (A subject of
    # its own: the newest ended session of rsync-user could still be one of the two above.)
    token = gateway.token("rsync-etc")
    r = _rsync(gateway, token, "target@127.0.0.1:/etc/hostname", str(tmp_path / "h"))
    assert r.returncode != 0
    assert b"rule 'no-etc-download' denies download of '/etc/hostname' (rsync)" in r.stderr
    assert not (tmp_path / "h").exists()
    session = ended_session(gateway, "rsync-etc")
    (cmd,) = [c for c in session["commands"] if c["decision"] == "deny"]
    assert (cmd["kind"], cmd["rule"]) == ("ssh.exec", "no-etc-download")
    assert cmd["text"].startswith("rsync --server --sender ")


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_contractors_cannot_upload_with_rsync_even_with_protected_args(
    gateway: SshGateway, tmp_path: Path
) -> None:
    (tmp_path / "f").write_bytes(b"data")
    token = gateway.token("rsync-contractor", groups=("ops", "contractors"))
    for extra in ([], ["-s"]):
        dest = f"{gateway.login()}:{tmp_path / 'copy'}"
        r = _rsync(gateway, token, *extra, str(tmp_path / "f"), dest)
        assert r.returncode != 0
        assert b"contractors may not change files" in r.stderr
        assert not (tmp_path / "copy").exists()


SFTP_SERVER = "/usr/lib/openssh/sftp-server"


@pytest.mark.skipif(not Path(SFTP_SERVER).exists(), reason="no sftp-server binary")
def test_sftp_server_run_as_a_command_is_guarded_like_the_subsystem(
    gateway: SshGateway, tmp_path: Path
) -> None:
    """`sftp -s /path/to/sftp-server` asks for an exec, not the subsystem: same rules, audit."""
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(50_000))
    token = gateway.token("sftp-exec")
    sftp = ["sftp", "-s", SFTP_SERVER, *gateway.ssh_options(), "-P", str(gateway.port)]
    batch = f"get {source} {tmp_path / 'copy.bin'}\nget /etc/hostname {tmp_path / 'h'}\n"
    r = subprocess.run(
        [*sftp, gateway.login()],
        env=gateway.client_env(token),
        capture_output=True,
        input=batch.encode(),
        timeout=60,
    )
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    assert b'remote open "/etc/hostname": Permission denied' in r.stderr
    assert not (tmp_path / "h").exists()
    session = ended_session(gateway, "sftp-exec", n_commands=3)
    kinds = [(c["kind"], c["decision"]) for c in session["commands"]]
    assert ("ssh.exec", "allow") in kinds
    assert ("sftp.download", "allow") in kinds and ("sftp.download", "deny") in kinds
