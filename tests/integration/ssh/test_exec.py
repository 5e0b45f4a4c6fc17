import pytest
pytestmark = pytest.mark.ssh

def test_exec(gateway):
    tok = gateway.token()
    r = gateway.ssh(tok, "echo hello-$((6*7)); echo err >&2; exit 3")
    print(r, gateway.log())
    assert r.stdout == b"hello-42\n"
    assert r.stderr == b"err\n"
    assert r.returncode == 3
