"""Making and reaching clusters: batch scripts, errors, the dashboard's metrics, TLS on loopback."""

from __future__ import annotations

import datetime as dt
import urllib.request

import pytest
from conftest import PARAMS

from radcluster.cluster import connect
from radcluster.cluster.jobqueue import render_job_script
from radcluster.errors import ClusterError
from radcluster.spec import (
    AddressClusterSpec,
    KubernetesClusterSpec,
    LocalClusterSpec,
    SlurmClusterSpec,
    TLSSpec,
    build_job,
)


def test_sbatch_script_renders_without_submitting():
    script = render_job_script(
        SlurmClusterSpec(
            cores=2,
            memory="3GiB",
            queue="debug",
            account="rad",
            walltime="00:30:00",
            job_extra_directives=("--gres=tmp:10G",),
        )
    )
    assert "#SBATCH -p debug" in script and "#SBATCH -A rad" in script
    assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH -t 00:30:00" in script
    assert "#SBATCH --gres=tmp:10G" in script and "--memory-limit 3.00GiB" in script
    # the worker advertises its memory as the resource radcluster's tasks claim
    assert f"--resources MEMORY={3 * 2**30}" in script
    two = render_job_script(SlurmClusterSpec(cores=4, memory="8GiB", processes=2))
    assert f"--resources MEMORY={4 * 2**30}" in two and "--memory-limit 4.00GiB" in two


def test_unreachable_scheduler_is_a_cluster_error():
    with pytest.raises(ClusterError, match="tcp://127.0.0.1:9"):
        with connect(AddressClusterSpec(address="tcp://127.0.0.1:9"), timeout=2):
            pass


def test_kubernetes_kind_needs_the_operator_variable(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with pytest.raises(ClusterError, match=r"\$DASK_SCHEDULER_ADDRESS.*not set"):
        with connect(KubernetesClusterSpec()):
            pass


def test_dashboard_on_loopback_with_prometheus_metrics():
    with connect(LocalClusterSpec(workers=1, dashboard_address=":0")) as client:
        link = client.dashboard_link
        assert link.startswith("http://127.0.0.1:")
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        body = urllib.request.urlopen(link.replace("/status", "/metrics"), timeout=30).read().decode()
        assert "dask_scheduler_workers" in body


def _certificates(folder):
    """A CA and a certificate for 127.0.0.1 signed by it, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def build(subject, issuer, key, signer, ca):
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            import ipaddress

            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "radcluster test CA")])
    ca = build(ca_name, ca_name, ca_key, ca_key, True)
    cert = build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), ca_name, key, ca_key, False)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "cert.pem").write_bytes(cert.public_bytes(pem))
    (folder / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return TLSSpec(ca_file=str(folder / "ca.pem"), cert_file=str(folder / "cert.pem"), key_file=str(folder / "key.pem"))


def test_tls_cluster_on_loopback_extracts(tmp_path, sample_manifest):
    from distributed import Client

    from radcluster import open_store
    from radcluster.jobs.extract import extract_job

    tls = _certificates(tmp_path)
    job = build_job(
        {
            "manifest": str(sample_manifest),
            "store": str(tmp_path / "store"),
            "extraction": {"params": str(PARAMS / "Params.yaml")},
            "cluster": {"kind": "local", "workers": 1, "dashboard_address": ":0", "tls": tls.model_dump()},
        }
    )
    with connect(job.cluster) as client:
        address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        # without the certificates nobody gets in
        with pytest.raises((OSError, TimeoutError)):
            Client(address.replace("tls://", "tcp://"), timeout=3)
        summary = extract_job(job, client=client)
    assert summary.ok and summary.rows == 3
    assert len(open_store(tmp_path / "store").features()) == 3


_FORKSERVER_PROBE = """
import json
from radcluster.cluster.local import prestart_local_workers
from radcluster.cluster import connect
from radcluster.spec import build_job

job = build_job({"manifest": "m.csv", "store": "s", "cluster": {"workers": 2, "dashboard_address": ":0"}})
prestart_local_workers(job)
with connect(job.cluster) as client:
    def probe():
        import sys, os
        return {
            "radiomics": "radiomics" in sys.modules,
            "task": {"radcluster.jobs.extract", "scipy.ndimage"} <= sys.modules.keys(),
            "omp": os.environ.get("OMP_NUM_THREADS"),
        }
    print(json.dumps(list(client.run(probe).values())))
"""


@pytest.mark.parametrize("method", ["default", "spawn"])
def test_cli_forks_local_workers_with_pyradiomics_imported(method):
    """Workers come from a fork server that imported pyradiomics and what the extraction task
    imports (radcluster.jobs.extract, scipy.ndimage), with one BLAS thread each;
    a user's own DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD is left alone."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if method == "spawn":
        env["DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"] = "spawn"
    out = subprocess.run(
        [sys.executable, "-c", _FORKSERVER_PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    workers = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(workers) == 2
    # a spawned worker imports pyradiomics and the task's modules only at its first task
    assert all(w["radiomics"] is (method == "default") for w in workers)
    assert all(w["task"] is (method == "default") for w in workers)
    assert all(w["omp"] == "1" for w in workers)


@pytest.mark.parametrize("profile", [False, True])
def test_local_workers_profile_only_when_asked(profile):
    """The statistical profiler costs a busy worker ~8%, so local workers run without it unless
    the cluster section asks for it; the setting reaches the worker processes."""
    spec = LocalClusterSpec(workers=1, dashboard_address=":0", profile=profile)
    with connect(spec) as client:
        [enabled] = client.run(lambda dask_worker: "profile" in dask_worker.periodic_callbacks).values()
    assert enabled is profile


def _inc(i):
    return i + 1


def test_dask_keeps_a_short_message_log_so_sent_tasks_are_not_held():
    """Each comm's log of recent batches holds the messages themselves (tasks with their
    arguments); at Dask's default of 1,000 the driver of a long run held its last 1,000 tasks
    per worker. Within connect() the scheduler's stream to each worker and the client's to the
    scheduler keep 64, and after 200 tasks the scheduler's log holds no more than that."""
    from radcluster.cluster import _LOW_LEVEL_LOG_LENGTH

    with connect(LocalClusterSpec(workers=1, dashboard_address=":0")) as client:
        for i in range(200):
            assert client.submit(_inc, i, pure=False).result() == i + 1
        scheduler = client.cluster.scheduler
        [stream] = scheduler.stream_comms.values()
        assert stream.recent_message_log.maxlen == _LOW_LEVEL_LOG_LENGTH == 64
        assert 0 < len(stream.recent_message_log) <= 64
        assert client.scheduler_comm.recent_message_log.maxlen == 64
        assert scheduler.transition_log.maxlen == 64
    import dask

    assert dask.config.get("distributed.admin.low-level-log-length") == 1000  # restored on exit
